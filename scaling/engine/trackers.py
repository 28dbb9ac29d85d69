"""Experiment trackers: small sinks that each receive rank 0's metric records.

`--report-to tensorboard,wandb,mlflow,csv` picks them; `metrics.jsonl` is always written (MetricsSink, the
run's own record). Every tracker takes the same record (a dict with `step` and numbers) and knows how to
name things for its backend. wandb and mlflow are optional extras, each imported by its own module
(scaling.engine.tracker_wandb, scaling.engine.tracker_mlflow) only when chosen.

A tracker's remote run is continued on resume: its id is kept in OUTPUT/trackers.json.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Protocol

from scaling.config.sections import TRACKERS
from scaling.errors import UserError

CSV_FILE = "metrics.csv"
IDS_FILE = "trackers.json"


class Tracker(Protocol):
    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def scalars_of(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a record, step excluded (booleans and strings are not metrics)."""
    return {
        key: float(value)
        for key, value in record.items()
        if key != "step"
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


def grouped_name(key: str) -> str:
    """`eval_loss` -> `eval/loss`, `loss` -> `train/loss`: the panels TensorBoard and wandb group by."""
    if key.startswith("eval_"):
        return f"eval/{key[5:]}"
    return f"train/{key}"


class TensorBoardTracker:
    def __init__(self, output: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a preempted run wrote past the step this one resumes from.
        self._writer = SummaryWriter(log_dir=str(output / "tensorboard"), purge_step=start_step + 1)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(grouped_name(key), value, step)

    def close(self) -> None:
        self._writer.close()


class CsvTracker:
    """OUTPUT/metrics.csv, one row per record, one column per metric name seen so far.

    A record with a name not seen before rewrites the file with the wider header (rare: the first train,
    eval and mixing records); otherwise rows are appended. Rows of steps past a resumed run's start are
    dropped on open, so a resume does not repeat steps."""

    def __init__(self, output: Path, start_step: int) -> None:
        self.path = output / CSV_FILE
        self._columns: list[str] = ["step"]
        rows: list[dict[str, str]] = []
        if self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                self._columns = list(reader.fieldnames or ["step"])
                rows = [row for row in reader if row.get("step") and int(row["step"]) <= start_step]
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        row: dict[str, Any] = {"step": step, **scalars}
        new = [key for key in scalars if key not in self._columns]
        if new:
            with open(self.path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            self._columns += new
            self._rewrite([*rows, row])
            return
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self._columns).writerow(row)

    def close(self) -> None:
        """Every row is on disk when log returns."""


def remembered_id(output: Path, tracker: str) -> str | None:
    """The id of the tracker's run an earlier (preempted) process of this run directory created."""
    path = output / IDS_FILE
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get(tracker)
    return str(value) if value else None


def remember_id(output: Path, tracker: str, run_id: str) -> None:
    path = output / IDS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    ids[tracker] = run_id
    path.write_text(json.dumps(ids, indent=1) + "\n", encoding="utf-8")


def open_tracker(name: str, output: Path, *, start_step: int, run_config: dict[str, Any]) -> Tracker:
    """The tracker `name` (one of TRACKERS), opened for this run (rank 0 only)."""
    if name == "tensorboard":
        return TensorBoardTracker(output, start_step)
    if name == "csv":
        return CsvTracker(output, start_step)
    # A resumed run continues its tracker run; a fresh one (step 0) starts another.
    run_id = remembered_id(output, name) if start_step > 0 else None
    if name == "wandb":
        from scaling.engine.tracker_wandb import WandbTracker

        return WandbTracker(output, run_config, run_id)
    if name == "mlflow":
        from scaling.engine.tracker_mlflow import MlflowTracker

        return MlflowTracker(output, run_config, run_id)
    raise UserError(f"--report-to {name}: not a tracker (choose from {', '.join(TRACKERS)})")


def tracker_problems(names: list[str]) -> list[str]:
    """What keeps the chosen trackers from starting, found before any rank starts (a tracker failing on
    rank 0 alone would leave the other ranks waiting for it)."""
    import importlib.util

    problems = []
    for name, module in (("wandb", "wandb"), ("mlflow", "mlflow")):
        if name in names and importlib.util.find_spec(module) is None:
            problems.append(f"{name} is not installed: pip install 'scaling[trackers]'")
    if "mlflow" in names:
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        file_store = not uri or uri.startswith("file:") or "://" not in uri
        allowed = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true", "yes")
        if file_store and not allowed:
            problems.append(
                "mlflow refuses its local file store (OUTPUT/mlruns, or a file: MLFLOW_TRACKING_URI) unless "
                "MLFLOW_ALLOW_FILE_STORE=true; or set MLFLOW_TRACKING_URI to a tracking server (http://...)"
            )
    return problems


def flat_params(run_config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A run config as flat `section.key -> text` pairs (what trackers show as a run's parameters)."""
    out: dict[str, str] = {}
    for key, value in run_config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, name + "."))
        else:
            out[name] = json.dumps(value, default=str) if not isinstance(value, str) else value
    return out
