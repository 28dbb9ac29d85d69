"""The ranks agree on non-finite losses and SIGTERM once per optimizer step when the run stops on NaN, and
every micro-step when it skips (a skipped backward must be skipped by all)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from scaling.engine.trainer import Trainer


def _loop(on_nan: str) -> Trainer:
    loop = Trainer.__new__(Trainer)  # only what agree() reads: no engine, no process group
    loop.run = SimpleNamespace(optim=SimpleNamespace(on_nan=on_nan))
    loop.env = SimpleNamespace(world_size=1)
    loop.rank = 0
    loop._pending_nonfinite = None
    return loop


NAN = torch.tensor(float("nan"))
ONE = torch.tensor(1.0)


def test_stop_mode_defers_to_the_boundary_and_remembers_an_earlier_nan():
    loop = _loop("stop")
    assert loop.agree(NAN, True, boundary=False) == ([], False)  # neither the NaN nor SIGTERM yet
    assert loop.agree(ONE, True, boundary=True) == ([0], True)
    assert loop.agree(ONE, False, boundary=True) == ([], False)  # the next step starts clean


def test_skip_mode_agrees_every_micro_step():
    loop = _loop("skip")
    assert loop.agree(NAN, False, boundary=False) == ([0], False)
    assert loop.agree(ONE, True, boundary=False) == ([], True)
