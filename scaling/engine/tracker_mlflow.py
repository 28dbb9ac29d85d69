"""MLflow: the only importer of mlflow (an optional extra: pip install 'scaling[trackers]').

MLflow's own settings apply (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME); without a tracking URI the runs
go to a file store in OUTPUT/mlruns (`mlflow ui --backend-store-uri OUTPUT/mlruns` shows them). The client
API is used, not mlflow's process-global "active run", so nothing else in the process is affected.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from scaling.engine.trackers import flat_params, grouped_name, remember_id
from scaling.errors import UserError

NAME = "mlflow"
_PARAM_BATCH = 100  # MLflow's limit of params per log_batch
_PARAM_CHARS = 6000  # and of characters per param value


def _metric_name(key: str) -> str:
    # MLflow accepts letters, digits, _ - . / and spaces in metric names; mixing weights carry source names.
    return re.sub(r"[^\w\-./ ]", "_", grouped_name(key))


class MlflowTracker:
    def __init__(self, output: Path, run_config: dict[str, Any], run_id: str | None = None) -> None:
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError(
                "--report-to mlflow needs mlflow (or mlflow-skinny): pip install 'scaling[trackers]'"
            ) from None
        self._metric = Metric
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (output.resolve() / "mlruns").as_uri()
        self._client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "scaling")
            experiment = self._client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(name)
            run_id = self._client.create_run(experiment_id, run_name=output.resolve().name).info.run_id
            params = [Param(k, v[:_PARAM_CHARS]) for k, v in flat_params(run_config).items()]
            for start in range(0, len(params), _PARAM_BATCH):
                self._client.log_batch(run_id, params=params[start : start + _PARAM_BATCH])
            remember_id(output, NAME, run_id)
        else:
            self._client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, step: int, scalars: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(_metric_name(k), v, now, step) for k, v in scalars.items()]
        self._client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self._client.set_terminated(self.run_id)
