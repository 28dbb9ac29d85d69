"""Memory: ZeRO-1/2/3 per-rank model-state bytes at world size 1, 2 and 4, measured (bench/memory_measure.py,
another engineer's: counts live tensor storages of a real engine) against `scaling estimate`'s model-state
formula (scaling.config.estimate.model_states; 16*Psi, 4*Psi + 12*Psi/N, 2*Psi + 14*Psi/N, 16*Psi/N).

    python -m bench memory [--worlds 1 2 4] [--stages 1 2 3] [--precision bf16]

Goal (informational, no ratio target in the issue): the estimate within 10% of the measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from bench.common import ROOT, plot, summary, write_result

TOLERANCE = 0.10


def measure(world: int, stages: list[int], precision: str) -> list[dict[str, Any]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(ROOT / "bench" / "memory_measure.py"), "--world-size", str(world), "--json",
           "--stages", *map(str, stages), "--precision", precision]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory_measure.py --world-size {world} failed: {proc.stderr[-800:]}")
    start = proc.stdout.index("[\n {")  # json.dumps(indent=1) of a list; log lines before it also hold "["
    return json.loads(proc.stdout[start:])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench memory")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args(argv)
    rows = []
    for world in args.worlds:
        rows += measure(world, args.stages, args.precision)
    table: dict[str, Any] = {}
    for stage in args.stages:
        for world in args.worlds:
            sel = [r for r in rows if r["stage"] == stage and r["world_size"] == world]
            if not sel:
                continue
            ratios = [r["ratio"] for r in sel]
            table[f"zero{stage}/world{world}"] = {
                "stage": stage,
                "world_size": world,
                "params": sel[0]["params"],
                "measured_bytes_per_rank": summary([r["measured"] for r in sel]),
                "estimate_bytes_per_rank": sel[0]["estimate"],
                "measured_over_estimate": summary(ratios),
                "met": all(abs(x - 1) <= TOLERANCE for x in ratios),
            }
    payload = {
        "goal": f"estimate within {TOLERANCE:.0%} of measured per-rank model states",
        "setup": {
            "precision": args.precision,
            "model": "GPT-2 2 layers h=64 (memory_measure.py)",
            "method": "live tensor storages (memory_measure.py): ZeRO-1 just before its end-of-backward gradient "
            "reduction (its full gradients are alive until then), ZeRO-2/3 after backward; both points are in rows",
        },
        "cases": table,
        "rows": rows,
        "met": all(c["met"] for c in table.values()),
    }
    write_result("memory", payload)

    def draw(ax: Any) -> None:
        for stage, color in zip(
            args.stages, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=False
        ):
            cs = [c for c in table.values() if c["stage"] == stage]
            ws = [c["world_size"] for c in cs]
            ax.plot(ws, [c["measured_bytes_per_rank"]["median"] / 1e3 for c in cs], "o-", color=color,
                    label=f"ZeRO-{stage} measured")  # fmt: skip
            ax.plot(ws, [c["estimate_bytes_per_rank"] / 1e3 for c in cs], "x--", color=color,
                    label=f"ZeRO-{stage} estimate")  # fmt: skip
        ax.set_xlabel("world size")
        ax.set_ylabel("model states per rank (kB)")
        ax.set_xticks(args.worlds)
        ax.set_title("ZeRO model states: measured vs scaling estimate")
        ax.legend(fontsize=7)

    plot("memory", draw)
    for name, c in table.items():
        m = c["measured_over_estimate"]
        print(f"{name}: measured/estimate {m['median']:.3f} [{m['min']:.3f}, {m['max']:.3f}]")
    return payload


if __name__ == "__main__":
    main()
