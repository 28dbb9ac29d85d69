"""Early stopping on the eval loss: a stateful extra (its counters resume with the run).

Every rank computes the same collective eval loss, so every rank reaches the same verdict without talking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

KEY = "early_stop"


@dataclass
class Verdict:
    improved: bool
    stop: bool


class EarlyStopping:
    """Stop after `patience` evaluations in a row without an eval loss below the best so far."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_loss = math.inf
        self.best_step: int | None = None
        self.bad_evals = 0

    def update(self, step: int, eval_loss: float) -> Verdict:
        if math.isfinite(eval_loss) and eval_loss < self.best_loss:
            self.best_loss, self.best_step, self.bad_evals = eval_loss, step, 0
            return Verdict(improved=True, stop=False)
        self.bad_evals += 1
        return Verdict(improved=False, stop=self.bad_evals >= self.patience)

    def describe(self) -> str:
        return (
            f"early stopping: no lower eval loss in {self.bad_evals} evaluation(s); "
            f"best {self.best_loss:.4f} at step {self.best_step}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {KEY: {"best_loss": self.best_loss, "best_step": self.best_step, "bad_evals": self.bad_evals}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get(KEY)
        if saved is None:  # a checkpoint of a run without early stopping: start watching from here
            return
        self.best_loss = float(saved["best_loss"])
        self.best_step = saved["best_step"]
        self.bad_evals = int(saved["bad_evals"])
