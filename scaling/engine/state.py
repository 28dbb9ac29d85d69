"""What a checkpoint keeps per rank beside DeepSpeed's engine state, gathered from its owners.

Every piece of run state outside the engine (the data stream's position, the random generators, the loop's
counters, an objective's own tensors) is a *stateful extra*: an object with `state_dict()` and
`load_state_dict(state)`. `RankState` unites their dicts into the one `rank{N:05d}.safetensors` file a checkpoint
holds per rank (data only: scaling.checkpoint.state_file), and hands the loaded dict back to each of them on
resume.

The file stays a flat dict whose keys belong to exactly one part (a clash is a bug and raises):
`step`, `tokens_seen`, `skipped_nonfinite` (the loop's counters), `world_size`, `dp_rank`, `loss_scale`
(where it was saved; `scaling checkpoint reshape` reads `dp_rank`, `data`, `tokens_seen`), `data` (the
stream), `rng` (python, numpy and torch generators), plus what the objective adds (distillation: `distill`,
and `projection`/`projection_optim` when it trains a projection).

Randomness itself is a function of position, not history: every micro-step reseeds torch from (seed, step,
micro-step, rank), so dropout replays exactly after a resume; `rng` covers whatever else drew numbers.
"""

from __future__ import annotations

import random
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "Keyed",
    "RankState",
    "RngState",
    "Stateful",
    "position_seed",
    "reseed",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]


@runtime_checkable
class Stateful(Protocol):
    """Anything whose state a checkpoint saves and a resume restores."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Keyed:
    """A stateful extra stored under one key of the rank state (the data stream under "data")."""

    def __init__(self, key: str, part: Any) -> None:
        self.key = key
        self.part = part

    def state_dict(self) -> dict[str, Any]:
        return {self.key: self.part.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.part.load_state_dict(state[self.key])


class RankState:
    """The per-rank checkpoint state: the union of its parts' `state_dict()`s, each part owning its keys.

    `load_state_dict` gives every part the whole loaded dict, in the order the parts were added; each reads
    its own keys (and may refuse a checkpoint that does not fit, raising a UserError on every rank alike)."""

    def __init__(self) -> None:
        self._parts: list[Stateful] = []

    def add(self, part: Stateful) -> None:
        self._parts.append(part)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for part in self._parts:
            own = part.state_dict()
            clash = set(own) & set(state)
            assert not clash, f"rank state keys {sorted(clash)} claimed twice"
            state.update(own)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part in self._parts:
            part.load_state_dict(state)


def position_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """A seed that depends only on where we are in the run, so dropout replays exactly after a resume."""
    return int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1)[0])


def reseed(seed: int) -> None:
    """torch.manual_seed for the devices we train on (CPU, CUDA), without its per-call cost: on a host without
    an initialised CUDA it queues a lazy CUDA seed and formats a stack trace every call (~0.7% of a small
    step, profiled); the resulting CPU and CUDA generator states are the same."""
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.default_generator.manual_seed(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class RngState:
    """The process's python, numpy and torch generators as the stateful extra "rng"."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(state["rng"])
