"""Click options of a training run (model, optimisation, checkpoints, logging, parallelism, data) and the
mapping from parsed options to typed config sections. Shared by `scaling train`, `scaling compress distill`,
launchers/train.py and `scaling launch`. The options are generated from the section dataclasses
(scaling.config.cli_options): their defaults and help texts are the fields' own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scaling.cli.data_options import data_config_from_options
from scaling.config.cli_options import explicit_options, from_params, section_options, with_options
from scaling.config.sections import (
    CheckpointConfig,
    DeepSpeedSource,
    DpoConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
)
from scaling.data.config import DataConfig
from scaling.engine.prepare import RunRequest
from scaling.errors import ConfigError, Problem
from scaling.models.lora_config import LoraConfig

__all__ = ["explicit_options", "run_options", "run_request_from_options"]

# The launcher knows the node size: `train` takes it from there, not from an option.
_NOT_TRAIN_OPTIONS = ("gpus_per_node",)


def run_option_groups() -> list[list[Any]]:
    """Every option of a training run, grouped by section in help order (fresh Option objects per call)."""
    return [
        section_options(ModelConfig),
        section_options(LoraConfig),
        section_options(DeepSpeedSource),
        section_options(OptimConfig),
        section_options(CheckpointConfig),
        section_options(LogConfig),
        section_options(ParallelConfig, exclude=_NOT_TRAIN_OPTIONS),
        section_options(DataConfig),
        section_options(DpoConfig),
    ]


def run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    return with_options(*run_option_groups())(func)


def run_request_from_options(
    params: dict[str, Any], *, world_size: int, explicit: frozenset[str], gpus_per_node: int | None = None
) -> RunRequest:
    # Not Click-required: ranks started with --resolved-config take everything from that file instead.
    missing = [Problem(f"--{name}", "is required") for name in ("model", "output") if not params[name]]
    if missing:
        raise ConfigError(missing, header="missing options")
    return RunRequest(
        model=from_params(ModelConfig, params),
        data=data_config_from_options(params),
        optim=from_params(OptimConfig, params),
        checkpoint=from_params(CheckpointConfig, params),
        log=from_params(LogConfig, params),
        parallel=from_params(ParallelConfig, params, gpus_per_node=gpus_per_node),
        deepspeed_source=from_params(DeepSpeedSource, params),
        world_size=world_size,
        explicit=explicit,
        dpo=from_params(DpoConfig, params),
        lora=from_params(LoraConfig, params),
    )
