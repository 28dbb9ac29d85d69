"""`scaling compress distill` and the `distill` job kind: the same ways in as `scaling train` (one dispatch,
scaling/launch/job.py), with the same options (minus --model: the student is --student or --student-layers):
- `scaling compress distill ARGS`: prepare (teacher, student, tokenizer, run config) and distil in this process.
- `... --num-gpus N ARGS` / `--hostfile H`: prepare here, then start
  `python -m scaling.rank distill --resolved-config OUTPUT/run_config.json` on every rank (the launch plan:
  rank reports, SIGTERM -> exit 75, the environment forwarded to every node).
- `deepspeed --module scaling.rank distill ARGS` (or launchers/distill.py): every rank checks the options,
  rank 0 prepares, all distil.

The command object is built on first use: `scaling compress --help` lists it without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from scaling.compress.config import DISTILL_CONFIG_FILE
from scaling.errors import ConfigError, UserError
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

SHORT_HELP = "Distil a teacher into a smaller student (a DeepSpeed training run)."
HELP = """Distil a frozen TEACHER into a STUDENT with DeepSpeed, like `scaling train` (same data, DeepSpeed
configs, checkpoints, --resume and launcher options).

The student is --student (HF directory, config.json or preset) or the teacher cut to --student-layers K
layers, initialised from the teacher's. Loss: alpha * task loss + (1 - alpha) * T^2 * KL(teacher || student),
plus optional hidden-state and attention-map MSE. OUTPUT/final is the student as a plain HF directory."""


def _distill_options(func: Any) -> Any:
    """The objective's options, generated from DistillConfig (defaults and help are its fields')."""
    from scaling.compress.distill import DistillConfig
    from scaling.config.cli_options import section_options, with_options

    return with_options(section_options(DistillConfig))(func)


def _build_command() -> click.Command:
    from scaling.cli.train_options import run_options

    @click.command("distill", context_settings={"show_default": True}, help=HELP)
    @_distill_options
    @run_options
    @job_launch_options
    @click.pass_context
    def command(ctx: click.Context, **params: Any) -> None:
        run_job(JOB, ctx, params)

    # The student replaces --model; keeping a second way to name it would only invite contradictions.
    command.params = [p for p in command.params if p.name != "model"]
    return command


class _DeferredCommand(click.Command):
    """Takes its options and callback from `_build_command()` the first time it parses arguments."""

    def __init__(self) -> None:
        super().__init__("distill", help=HELP, short_help=SHORT_HELP, context_settings={"show_default": True})
        self._built = False

    def _ensure_built(self) -> None:
        if not self._built:
            real = _build_command()
            self.params = real.params
            self.callback = real.callback
            self._built = True

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        self._ensure_built()
        return super().make_context(info_name, args, parent=parent, **extra)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        self._ensure_built()
        return super().get_params(ctx)


distill = _DeferredCommand()


def _distill_config(params: dict[str, Any]) -> Any:
    from scaling.compress.distill import DistillConfig
    from scaling.config.cli_options import from_params

    return from_params(DistillConfig, params)


def _request(ctx: click.Context, world_size: int, gpus_per_node: int | None) -> JobRequest:
    from scaling.cli.train_options import explicit_options, run_request_from_options

    params = ctx.params
    if not params["teacher"]:
        raise UserError("--teacher is required")
    cfg = _distill_config(params)
    # The teacher stands in for --model until prepare() has the student.
    run = run_request_from_options(
        {**params, "model": params["teacher"]},
        world_size=world_size,
        explicit=explicit_options(ctx),
        gpus_per_node=gpus_per_node,
    )
    return JobRequest(run=run, objective=cfg)


def _check(request: JobRequest) -> RunConfig | None:
    """The distillation settings, and the run options against the teacher's shape when the teacher is an HF
    directory (a training checkpoint is exported by prepare first; the launch checks it there)."""
    from scaling.engine.prepare import validate

    problems = request.objective.problems()
    if problems:
        raise ConfigError(problems, header="cannot start this distillation")
    if not (Path(request.objective.teacher) / "config.json").is_file():
        return None
    return validate(request.run)


def _prepare(request: JobRequest) -> Path:
    from scaling.compress.distill import prepare

    run, _ = prepare(request.run, request.objective)
    return run.output


def _train(texts: Mapping[str, str], env: LaunchEnv) -> TrainResult:
    import json

    from scaling.compress.distill import DistillConfig, distill_train

    cfg = DistillConfig.from_dict(json.loads(texts[DISTILL_CONFIG_FILE]))
    return distill_train(run_config_from(texts), cfg, env)


def _summary(result: TrainResult) -> list[str]:
    return result_summary(result, model_label="student (HF model)", with_eval=True)


JOB = JobKind(
    name="distill",
    command="scaling.cli.distill:distill",
    request=_request,
    check=_check,
    prepare=_prepare,
    files=(RUN_CONFIG, DISTILL_CONFIG_FILE),
    train=_train,
    summary=_summary,
)
