"""Learning-rate schedules with the semantics HF users know (get_linear_schedule_with_warmup and friends):
linear warmup from 0, then linear decay to 0, cosine decay to a floor, or constant.

Used when the DeepSpeed JSON has no `scheduler` section; DeepSpeed saves and restores its state with the
engine's checkpoints like its own schedulers'.
"""

from __future__ import annotations

import math
from typing import Any

from scaling.config.sections import OptimConfig


def lr_factor(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr for the optimizer step with index `step` (0-based)."""
    if warmup and step < warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def build_lr_scheduler(optimizer: Any, optim: OptimConfig, total_steps: int) -> Any:
    from torch.optim.lr_scheduler import LambdaLR

    def factor(step: int) -> float:
        return lr_factor(
            step,
            warmup=optim.warmup_steps,
            total=total_steps,
            schedule=optim.lr_schedule,
            min_ratio=optim.min_lr_ratio,
        )

    return LambdaLR(optimizer, factor)
