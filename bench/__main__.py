"""`python -m bench all|NAME [ARGS]` (and `scaling bench ...`): run benchmarks, then regenerate BENCHMARKS.md.

Ours run in-process (each starts its own rank processes); the other engineers' scripts (data_pipeline,
memory_measure via bench.memory, pipeline_bubble, compress_*) run as subprocesses when they exist, with
bounded time, and their bench/results/*.json are folded into the report.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (kind, target, default args). kind "module": bench.<target>.main(argv); "script": python bench/<target>.
BENCHMARKS: dict[str, tuple[str, str, list[str]]] = {
    "trainer_overhead": ("module", "trainer_overhead", []),
    "data_pipeline": ("script", "data_pipeline.py", ["--repeats", "3", "--copies", "1"]),
    "input_pipeline": ("module", "input_pipeline", []),
    "vs_hf_trainer": ("module", "vs_hf_trainer", []),
    "memory": ("module", "memory", []),
    "pipeline_bubble": ("script", "pipeline_bubble.py", []),
    "gpu_check": ("module", "gpu_check", ["--dry-run"]),
}
# Long runs left out of `all` (their last results are still reported): GB-scale streaming, real-model GPTQ,
# the SST-2 teacher -> student -> int8 chain (about 35 min).
NOT_IN_ALL = {"data_memory": ["--gb", "2", "--seconds", "60"], "compress_real": [], "sst2_distill": []}
SCRIPT_TIMEOUT_S = 600
# Runs that are long by design (asked for by name only).
LONG_TIMEOUTS_S = {"compress_real": 3600, "sst2_distill": 5400}


def discovered() -> dict[str, tuple[str, str, list[str]]]:
    """The fixed table plus any bench/compress_*.py another engineer has added since."""
    table = dict(BENCHMARKS)
    for path in sorted((ROOT / "bench").glob("compress_*.py")):
        if path.stem not in NOT_IN_ALL:
            table.setdefault(path.stem, ("script", path.name, []))
    for name, args in NOT_IN_ALL.items():
        if (ROOT / "bench" / f"{name}.py").is_file():
            table.setdefault(name, ("script", f"{name}.py", args))
    return table


def run_one(name: str, extra: list[str]) -> dict[str, object]:
    kind, target, default = discovered()[name]
    argv = extra or default
    started = time.perf_counter()
    status = "ok"
    if kind == "module":
        try:
            importlib.import_module(f"bench.{target}").main(argv)
        except Exception as err:
            status = f"failed: {type(err).__name__}: {str(err)[-400:]}"
    else:
        path = ROOT / "bench" / target
        if not path.is_file():
            return {"name": name, "status": "absent", "seconds": 0.0}
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        env.setdefault("OMP_NUM_THREADS", "2")
        env.setdefault("HF_HUB_OFFLINE", "1")
        timeout = LONG_TIMEOUTS_S.get(name, SCRIPT_TIMEOUT_S)
        try:
            proc = subprocess.run(
                [sys.executable, str(path), *argv], cwd=ROOT, env=env, timeout=timeout,
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            sys.stdout.write(proc.stdout[-3000:])
            if proc.returncode != 0:
                status = f"failed: rc {proc.returncode}: {proc.stderr[-400:]}"
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout} s"
    return {"name": name, "status": status, "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    table = discovered()
    if not argv or argv[0] in ("-h", "--help", "list"):
        print("usage: python -m bench all|NAME [ARGS...]\n\nbenchmarks:")
        for name, (kind, target, _) in table.items():
            note = " (not in `all`)" if name in NOT_IN_ALL else ""
            print(f"  {name:<18} {kind:<6} {target}{note}")
        return 0
    what, extra = argv[0], argv[1:]
    if what == "report":
        from bench.report import main as report

        report()
        return 0
    if what == "all":
        names = [n for n in table if n not in NOT_IN_ALL]
        extra = []
    elif what in table:
        names = [what]
    else:
        print(f"unknown benchmark {what!r}; choose from: all, report, {', '.join(table)}", file=sys.stderr)
        return 2
    statuses = []
    for name in names:
        print(f"== {name}", flush=True)
        statuses.append(run_one(name, extra))
        print(f"== {name}: {statuses[-1]['status']} ({statuses[-1]['seconds']} s)", flush=True)
    from bench.report import main as report

    report(statuses if what == "all" else None)
    return 0 if all(s["status"] in ("ok", "absent") for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
