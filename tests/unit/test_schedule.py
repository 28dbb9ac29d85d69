import math

import pytest
import torch

from scaling.config.sections import OptimConfig
from scaling.engine.schedule import build_lr_scheduler, lr_factor


def test_linear_warmup_then_linear_decay_to_zero():
    factors = [lr_factor(s, warmup=2, total=6, schedule="linear") for s in range(6)]
    assert factors == [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]


def test_no_warmup_starts_at_peak():
    assert lr_factor(0, warmup=0, total=4, schedule="linear") == 1.0
    assert lr_factor(0, warmup=0, total=4, schedule="cosine") == 1.0


def test_cosine_reaches_its_floor():
    assert lr_factor(10, warmup=0, total=10, schedule="cosine", min_ratio=0.1) == pytest.approx(0.1)
    mid = lr_factor(5, warmup=0, total=10, schedule="cosine", min_ratio=0.0)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_constant_after_warmup():
    assert [lr_factor(s, warmup=2, total=5, schedule="constant") for s in range(5)] == [0, 0.5, 1, 1, 1]


def test_scheduler_drives_the_optimizer():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=0.1)
    sched = build_lr_scheduler(opt, OptimConfig(lr=0.1, warmup_steps=1, lr_schedule="linear"), total_steps=3)
    seen = []
    for _ in range(3):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.0, 0.1, 0.05])
