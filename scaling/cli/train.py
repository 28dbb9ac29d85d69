"""`scaling train` and the `train` job kind (see scaling/launch/job.py for the one dispatch all kinds share):
- `scaling train ARGS` (no launcher): resolve, prepare, train in this process.
- `scaling train --num-gpus N ARGS` / `--hostfile H`: prepare here (OUTPUT/run_config.json), then start
  `python -m scaling.rank train --resolved-config OUTPUT/run_config.json` on every rank through the launch plan.
- `deepspeed --module scaling.rank train ARGS` (or launchers/train.py): every rank validates the options
  (cheap, before any process group); rank 0 prepares the run and every rank trains from its resolved config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from scaling.cli.train_options import explicit_options, run_options, run_request_from_options
from scaling.launch.job import (
    RUN_CONFIG,
    JobKind,
    JobRequest,
    job_launch_options,
    result_summary,
    run_config_from,
    run_job,
)

if TYPE_CHECKING:
    from scaling.config.run import RunConfig
    from scaling.distributed.env import LaunchEnv
    from scaling.engine.trainer import TrainResult


@click.command("train", context_settings={"show_default": True})
@run_options
@job_launch_options
@click.pass_context
def train(ctx: click.Context, **params: Any) -> None:
    """Train an HF model with DeepSpeed."""
    run_job(JOB, ctx, params)


def _request(ctx: click.Context, world_size: int, gpus_per_node: int | None) -> JobRequest:
    run = run_request_from_options(
        ctx.params, world_size=world_size, explicit=explicit_options(ctx), gpus_per_node=gpus_per_node
    )
    return JobRequest(run=run)


def _check(request: JobRequest) -> RunConfig:
    from scaling.engine.prepare import validate

    return validate(request.run)


def _prepare(request: JobRequest) -> Path:
    from scaling.engine.prepare import materialize

    return materialize(request.run).output


def _train(texts: Mapping[str, str], env: LaunchEnv) -> TrainResult:
    from scaling.engine.trainer import train as train_run

    return train_run(run_config_from(texts), env)


def _summary(result: TrainResult) -> list[str]:
    return result_summary(result)


JOB = JobKind(
    name="train",
    command="scaling.cli.train:train",
    request=_request,
    check=_check,
    prepare=_prepare,
    files=(RUN_CONFIG,),
    train=_train,
    summary=_summary,
)
