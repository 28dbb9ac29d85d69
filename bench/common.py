"""Shared pieces of the benchmarks: fixed threads, alternating arms, robust summaries, results files, plots,
and a small pool that runs one function on N gloo ranks (forkserver, preloaded, as tests/harness.py does).

Rules every benchmark here follows (GUIDE.md section 4): arms alternate (A B A B ...) inside one invocation,
thread counts are fixed, results are medians with min/max and ratios, never a lone absolute time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare.txt"
SST2 = SHARED_DATA / "sst2"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def fix_threads(n: int) -> None:
    """Same thread count for every arm (set before torch spins up its pools where possible)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    import torch

    torch.set_num_threads(n)


def summary(values: Sequence[float]) -> dict[str, float]:
    vals = [float(v) for v in values]
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def alternate(arms: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """A B A B ... with the order flipped every other round, so slow drift on a shared machine hits both."""
    order = []
    for i in range(repeats):
        round_arms = list(arms) if i % 2 == 0 else list(reversed(arms))
        order += [(i, arm) for arm in round_arms]
    return order


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
    """Ratios of the rounds' paired values (same round = adjacent in time), summarised."""
    return summary([a / b for a, b in zip(num, den, strict=False) if b])


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    for name in ("torch", "deepspeed", "transformers", "datasets", "accelerate"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except Exception:
            info[name] = None
    try:
        info["commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        info["commit"] = None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """bench/results/<name>.json, with the machine it ran on."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"name": name, "machine": machine(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    return path


def plot(name: str, draw: Callable[[Any], None], *, size: tuple[float, float] = (6.4, 4.0)) -> Path | None:
    """bench/results/<name>.png drawn by `draw(ax)`; matplotlib (Agg) is imported only here."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=size)
    try:
        draw(ax)
        fig.tight_layout()
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{name}.png"
        fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)
    return path


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 900.0) -> list[Any]:
    """Call fn(*args) on `world_size` gloo ranks; each rank's return value, or the first rank's error."""
    from tests.harness import run_ranks as spawn_ranks

    if str(ROOT) not in sys.path:  # the ranks import bench.* by name
        sys.path.insert(0, str(ROOT))
    return spawn_ranks(fn, world_size, *args, timeout=timeout)


def init_group() -> Any:
    """Join the ranks' gloo group (no shm op build); returns the LaunchEnv."""
    from scaling.distributed import LaunchEnv
    from scaling.engine import dist as dist_setup

    env = LaunchEnv.from_environ()
    dist_setup.init_process_group(env, timeout_s=600)
    return env


def steady_rate(marks: Sequence[float], warmup: int) -> float:
    """Steps per second between the end of step `warmup` and the last step (start-up excluded)."""
    marks = list(marks)
    if len(marks) <= warmup + 1:
        return float("nan")
    return (len(marks) - 1 - warmup) / (marks[-1] - marks[warmup])


def fmt_ratio(s: dict[str, float]) -> str:
    return f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"
