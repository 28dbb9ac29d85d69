"""Measured pipeline bubble of a 2-stage pipelined Llama on CPU ranks, next to the 1F1B theory.

For each number of micro-batches m, both stages run `--steps` optimizer steps (after one warm-up step). Each
stage's time inside train_batch is split into compute (forward and backward instructions), the optimizer phase
(gradient reductions and step, outside the pipelined schedule), and the rest: waiting on the other stage and
moving activations/gradients. The idle share of a stage is 1 - compute / (wall - optimizer phase), the share of
the pipelined schedule that stage spent not computing; theory for p stages is (p-1)/(m+p-1).

Usage: python bench/pipeline_bubble.py [--steps 3] [--hidden 256] [--layers 4] [--seq 128] [--micro 4]
Writes bench/results/pipeline_bubble.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the gloo harness and its rank functions
sys.path.insert(0, str(ROOT))

STAGES = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "pipeline_bubble.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from harness import run_ranks
    from ranks_parallel import bubble_timings

    rows = []
    for m in args.micro_batches:
        per_stage = run_ranks(
            bubble_timings, STAGES, m, args.steps, args.hidden, args.layers, args.seq, args.micro
        )
        theory = (STAGES - 1) / (m + STAGES - 1)
        stages = []
        for t in sorted(per_stage, key=lambda r: r["stage"]):
            window = t["wall_s"] - t["step_s"]
            stages.append(
                {
                    "stage": t["stage"],
                    "idle_share": 1.0 - t["compute_s"] / window,
                    "compute_s_per_step": t["compute_s"] / t["steps"],
                    "schedule_s_per_step": window / t["steps"],
                    "optimizer_s_per_step": t["step_s"] / t["steps"],
                }
            )
        rows.append({"micro_batches": m, "stages": STAGES, "theory": theory, "per_stage": stages})

    print(f"pipeline bubble, p={STAGES}: idle share of the pipelined schedule per stage vs (p-1)/(m+p-1)")
    print(
        f"{'m':>3} {'theory':>8} " + " ".join(f"{'stage ' + str(s):>9}" for s in range(STAGES)) + "  s/step"
    )
    for row in rows:
        idle = " ".join(f"{s['idle_share']:9.3f}" for s in row["per_stage"])
        wall = max(s["schedule_s_per_step"] for s in row["per_stage"])
        print(f"{row['micro_batches']:>3} {row['theory']:8.3f} {idle}  {wall:6.3f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    config = {k: getattr(args, k) for k in ("steps", "hidden", "layers", "seq", "micro")}
    cpus = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    record = {"config": config, "cpu_count": cpus, "load_average_1m": load, "rows": rows}
    args.output.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
