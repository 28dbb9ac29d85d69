"""Weights & Biases: the only importer of wandb (an optional extra: pip install 'scaling[trackers]').

wandb's own settings apply (WANDB_PROJECT, WANDB_MODE=offline, WANDB_DIR, WANDB_API_KEY); by default the
project is "scaling", the run is named after the run directory and its files live in OUTPUT/wandb.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scaling.engine.trackers import grouped_name, remember_id
from scaling.errors import UserError

NAME = "wandb"


class WandbTracker:
    def __init__(self, output: Path, run_config: dict[str, Any], run_id: str | None = None) -> None:
        try:
            import wandb
        except ImportError:
            raise UserError(
                "--report-to wandb needs the wandb package: pip install 'scaling[trackers]'"
            ) from None
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "scaling"),
            name=output.resolve().name,
            id=run_id,
            resume="allow" if run_id else None,
            # WANDB_DIR, when set, is wandb's own choice of place and wins over the run directory.
            dir=None if "WANDB_DIR" in os.environ else str(output),
            config=run_config,
        )
        remember_id(output, NAME, self._run.id)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log({grouped_name(key): value for key, value in scalars.items()}, step=step)

    def close(self) -> None:
        self._run.finish()
