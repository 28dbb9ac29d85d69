"""Where rank 0's numbers go: metrics.jsonl, TensorBoard event files and a console progress bar."""

from __future__ import annotations

import json
import math
import os
import resource
import sys
from pathlib import Path
from typing import Any

from scaling.config.sections import LogConfig


class MetricsSink:
    """Rank 0 writes; other ranks hold an inert sink so call sites need no rank checks."""

    def __init__(self, cfg: LogConfig, output: Path, *, active: bool, total_steps: int, start_step: int):
        self.active = active
        self._jsonl = None
        self._tb = None
        self._bar = None
        if not active:
            return
        output.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(output / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - lives with the run
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(output / "tensorboard"), purge_step=start_step + 1)
        if cfg.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr
            )

    def log(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(_jsonable(record)) + "\n")
        self._jsonl.flush()
        step = int(record["step"])
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(_tb_name(key), value, step)
        if self._bar is not None and "loss" in record:
            self._bar.set_postfix(
                loss=f"{record['loss']:.4f}",
                lr=f"{record.get('lr', 0):.2e}",
                tok_s=f"{record.get('tokens_per_s', 0):.0f}",
            )

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def message(self, text: str) -> None:
        if not self.active:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        for thing in (self._bar, self._tb, self._jsonl):
            if thing is not None:
                thing.close()
        self._bar = self._tb = self._jsonl = None


def _tb_name(key: str) -> str:
    if key.startswith("eval_"):
        return f"eval/{key[5:]}"
    return f"train/{key}"


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = str(value)
        else:
            out[key] = value
    return out


def memory_stats() -> dict[str, float]:
    """Resident and peak host memory of this process, and accelerator memory when there is one (MiB)."""
    import torch

    stats = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        with open(f"/proc/{os.getpid()}/statm") as handle:
            stats["rss_mib"] = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        pass
    if torch.cuda.is_available():
        stats["gpu_mem_mib"] = torch.cuda.memory_allocated() / 2**20
        stats["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return stats
