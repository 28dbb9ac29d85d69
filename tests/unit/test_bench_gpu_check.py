"""bench/gpu_check.sh's CPU dry run: the GPU check's code path (our trainer, MFU, estimate, plain loop) runs
in seconds here, so the script a GPU session will run does not rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["mode"].startswith("dry-run")
    bf16 = report["bf16"]
    assert bf16["tokens_per_s"] > 0 and bf16["flops_per_token"] > 6 * bf16["params"]
    assert 0 < bf16["mfu_pct"] < 100
    assert report["memory"]["estimate_total_bytes"] > report["memory"]["estimate_model_states_bytes"] > 0
    assert report["plain_pytorch"]["tokens_per_s"] > 0 and report["ours_over_plain"] > 0
    assert report["fp16"].startswith("skipped")
    assert "MFU" in proc.stdout


def test_gpu_check_script_names_its_device_commands():
    header = (ROOT / "bench" / "gpu_check.sh").read_text()
    assert "pip wheel --no-deps -w .whl deepspeed==0.19.8" in header
    assert 'carry=[".whl"]' in header and "--no-index --no-deps" in header
