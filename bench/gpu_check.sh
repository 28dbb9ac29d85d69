#!/usr/bin/env bash
# GPU check: ~1B Llama, bf16, seq 2048, ZeRO-1 on one GPU; tokens/s, MFU (vs 989 TFLOP/s and a measured bf16
# matmul), peak memory vs `scaling estimate`, the fp16 path, ours vs a plain PyTorch loop. Under 8 minutes on
# an H200. Results: bench/results/gpu_check.json (and $OUT/gpu_check.json + log when $OUT is set).
#
# 1. HERE (the CPU machine, once; pip reaches the package index). DeepSpeed ships only as an sdist, so build its
#    wheel here; the H200 image lacks hjson and pydantic; carry transformers 5.24 (the image has 5.17; its
#    tokenizers 0.23.2 and huggingface-hub 1.33 satisfy 5.24's pins). `.whl/` is in .gitignore.
#      bench/gpu_check.sh --prepare          # = the pip wheel / pip download commands in prepare() below
# 2. ON THE GPU MACHINE, through the device tool (no network there; .whl/ travels with `carry`):
#      run(command="bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#    The script installs .whl/*.whl into /tmp/site (--no-index --no-deps) and puts it first on PYTHONPATH.
#    DeepSpeed's CUDA ops are JIT-built on first use; the default optimizer is torch's fused AdamW through
#    DeepSpeed's `torch_adam`, so nothing is compiled. `bench/gpu_check.sh --ds-fused-adam` builds FusedAdam
#    (nvcc and ninja are on the image; allow ~1-2 minutes more).
# 3. CPU DRY RUN (CI runs it in tests/unit/test_bench_gpu_check.py; seconds):
#      bench/gpu_check.sh --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"

prepare() {
  mkdir -p .whl
  "$PY" -m pip wheel --no-deps -w .whl deepspeed==0.19.8
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    transformers==5.24.0
  ls -la .whl
}

case "${1:-}" in
  --prepare) prepare; exit 0 ;;
  --dry-run) shift; exec "$PY" -m bench.gpu_check --dry-run "$@" ;;
esac

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv || true
LOG="${OUT:-/tmp}/gpu_check.log"
set +e
timeout 470 "$PY" -m bench.gpu_check "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
if [ -n "${OUT:-}" ] && [ -f bench/results/gpu_check.json ]; then cp bench/results/gpu_check.json "$OUT/"; fi
exit "$rc"
