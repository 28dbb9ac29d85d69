"""Click options of a training run (model, optimisation, checkpoints, logging, parallelism) and the
mapping from parsed options to typed config sections. Shared by `scaling train`, launchers/train.py and
`scaling launch`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from scaling.cli.data_options import data_config_from_options, data_options
from scaling.config.sections import (
    LR_SCHEDULES,
    ON_NAN,
    PRECISIONS,
    TASKS,
    CheckpointConfig,
    DeepSpeedSource,
    LogConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
)
from scaling.engine.prepare import RunRequest
from scaling.errors import ConfigError, Problem


class Betas(click.ParamType):
    name = "B1,B2"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[float, float]:
        if isinstance(value, tuple):
            return value
        try:
            b1, b2 = (float(x) for x in str(value).split(","))
        except ValueError:
            self.fail(f"expected two comma-separated floats, got {value!r}", param, ctx)
        return (b1, b2)


def run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--model",
            "model",
            default=None,
            help="HF model dir, config.json, or preset (tiny-gpt2, tiny-llama, tiny-bert).",
        ),
        click.option("--task", type=click.Choice(TASKS), default="clm", show_default=True),
        click.option(
            "--tokenizer", default=None, help="Tokenizer dir (default: the model's, or trained on --data)."
        ),
        click.option(
            "--vocab-size",
            type=click.IntRange(min=64),
            default=4096,
            show_default=True,
            help="Vocabulary of a trained tokenizer.",
        ),
        click.option(
            "--num-labels",
            type=click.IntRange(min=2),
            default=2,
            show_default=True,
            help="Classes for seq-cls.",
        ),
        click.option(
            "--ds-config", default=None, help="DeepSpeed JSON path or preset name (default: zero2)."
        ),
        click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override a DeepSpeed JSON key (dotted path).",
        ),
        click.option("--micro-batch", type=click.IntRange(min=1), default=8, show_default=True),
        click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-4, show_default=True),
        click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True),
        click.option("--betas", type=Betas(), default="0.9,0.999", show_default=True),
        click.option("--warmup-steps", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--max-steps", type=click.IntRange(min=1), default=None),
        click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None),
        click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default="linear", show_default=True),
        click.option("--min-lr-ratio", type=click.FloatRange(0, 1), default=0.0, show_default=True),
        click.option("--clip-grad", type=click.FloatRange(min=0), default=1.0, show_default=True),
        click.option("--precision", type=click.Choice(PRECISIONS), default="bf16", show_default=True),
        click.option("--seed", type=int, default=42, show_default=True),
        click.option(
            "--activation-checkpointing/--no-activation-checkpointing", default=False, show_default=True
        ),
        click.option("--on-nan", type=click.Choice(ON_NAN), default="stop", show_default=True),
        click.option(
            "--output", default=None, type=click.Path(file_okay=False), help="Run directory (required)."
        ),
        click.option("--save-every", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--keep-last", type=click.IntRange(min=1), default=3, show_default=True),
        click.option("--resume", default=None, help="'auto' or a checkpoint path."),
        click.option(
            "--export/--no-export",
            "export_final",
            default=True,
            show_default=True,
            help="Write OUTPUT/final at the end.",
        ),
        click.option(
            "--halt-at-step",
            type=click.IntRange(min=1),
            default=None,
            help="Save and stop after this step; --resume auto continues the same schedule.",
        ),
        click.option("--eval-every", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--eval-batches", type=click.IntRange(min=1), default=50, show_default=True),
        click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True),
        click.option("--tensorboard/--no-tensorboard", default=True, show_default=True),
        click.option("--progress/--no-progress", default=True, show_default=True),
        click.option("--tensor-parallel", type=click.IntRange(min=1), default=1, show_default=True),
        click.option("--pipeline-stages", type=click.IntRange(min=1), default=1, show_default=True),
        click.option(
            "--sequence-parallel",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Ranks that split every sequence (DeepSpeed-Ulysses; causal LMs, with ZeRO/DP).",
        ),
        click.option("--partition-method", default="parameters", show_default=True),
        click.option(
            "--dist-timeout",
            type=click.FloatRange(min=1),
            default=300.0,
            show_default=True,
            help="Collective timeout (s).",
        ),
    ]
    func = data_options(func)
    for option in reversed(options):
        func = option(func)
    return func


def explicit_options(ctx: click.Context) -> frozenset[str]:
    typed = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return frozenset(name for name in ctx.params if ctx.get_parameter_source(name) in typed)


def run_request_from_options(
    params: dict[str, Any], *, world_size: int, explicit: frozenset[str], gpus_per_node: int | None = None
) -> RunRequest:
    # Not Click-required: ranks started with --resolved-config take everything from that file instead.
    missing = [Problem(f"--{name}", "is required") for name in ("model", "output") if not params[name]]
    if missing:
        raise ConfigError(missing, header="missing options")
    return RunRequest(
        model=ModelConfig(
            source=params["model"],
            task=params["task"],
            tokenizer=params["tokenizer"],
            num_labels=params["num_labels"],
            vocab_size=params["vocab_size"],
            activation_checkpointing=params["activation_checkpointing"],
        ),
        data=data_config_from_options(params),
        optim=OptimConfig(
            micro_batch=params["micro_batch"],
            grad_accum=params["grad_accum"],
            lr=params["lr"],
            weight_decay=params["weight_decay"],
            betas=params["betas"],
            warmup_steps=params["warmup_steps"],
            max_steps=params["max_steps"],
            epochs=params["epochs"],
            lr_schedule=params["lr_schedule"],
            min_lr_ratio=params["min_lr_ratio"],
            clip_grad=params["clip_grad"],
            precision=params["precision"],
            seed=params["seed"],
            on_nan=params["on_nan"],
        ),
        checkpoint=CheckpointConfig(
            output=params["output"],
            save_every=params["save_every"],
            keep_last=params["keep_last"],
            resume=params["resume"],
            export_final=params["export_final"],
            halt_at_step=params["halt_at_step"],
        ),
        log=LogConfig(
            log_every=params["log_every"],
            eval_every=params["eval_every"],
            eval_batches=params["eval_batches"],
            tensorboard=params["tensorboard"],
            progress=params["progress"],
        ),
        parallel=ParallelConfig(
            tensor_parallel=params["tensor_parallel"],
            pipeline_stages=params["pipeline_stages"],
            sequence_parallel=params["sequence_parallel"],
            partition_method=params["partition_method"],
            dist_timeout_s=params["dist_timeout"],
            gpus_per_node=gpus_per_node,
        ),
        deepspeed_source=DeepSpeedSource(config=params["ds_config"], overrides=list(params["overrides"])),
        world_size=world_size,
        explicit=explicit,
    )
