"""The whole run, resolved once: typed sections plus the final DeepSpeed JSON and where its values came from.

It is written to OUTPUT/run_config.json before any rank starts and into every checkpoint; ranks started by
`scaling train`/`scaling launch` read that file instead of re-parsing the command line.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.config.deepspeed import ResolvedDeepSpeed, RunValues, resolve_deepspeed
from scaling.config.device import Devices
from scaling.config.hardware import hardware_problems
from scaling.config.sections import (
    ON_NAN,
    TASKS,
    CheckpointConfig,
    DeepSpeedSource,
    DpoConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
)
from scaling.data.config import DataConfig
from scaling.errors import ConfigError, Problem
from scaling.models.lora_config import LoraConfig

RUN_CONFIG_FILE = "run_config.json"


@dataclass(kw_only=True)
class RunConfig:
    """Everything a rank needs to run, with nothing left to infer."""

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    checkpoint: CheckpointConfig
    log: LogConfig
    parallel: ParallelConfig
    deepspeed_source: DeepSpeedSource
    world_size: int
    """Processes the run was resolved for."""
    total_steps: int
    """Optimizer steps of the whole run."""
    deepspeed: dict[str, Any] = field(default_factory=dict)
    """The final DeepSpeed JSON every rank passes to deepspeed.initialize."""
    deepspeed_sources: dict[str, str] = field(default_factory=dict)
    """Dotted key -> where its value came from."""
    dpo: DpoConfig = field(default_factory=DpoConfig)
    """The DPO loss's settings (read by --task dpo only)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters over a frozen base (off unless lora.r > 0)."""
    embedding_transplant: dict[str, Any] = field(default_factory=dict)
    """A pretrained model moved to another tokenizer: the init, its plan file in OUTPUT, and the rows copied,
    composed, set by role, set to the mean row, left random (empty: the vocabulary is the model's own)."""

    @property
    def output(self) -> Path:
        return Path(self.checkpoint.output)

    @property
    def zero_stage(self) -> int:
        return int(self.deepspeed.get("zero_optimization", {}).get("stage", 0))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        optim = dict(data["optim"])
        optim["betas"] = tuple(optim["betas"])
        return cls(
            model=ModelConfig(**data["model"]),
            data=DataConfig(**data["data"]),
            optim=OptimConfig(**optim),
            checkpoint=CheckpointConfig(**data["checkpoint"]),
            log=LogConfig(**data["log"]),
            parallel=ParallelConfig(**data["parallel"]),
            deepspeed_source=DeepSpeedSource(**data["deepspeed_source"]),
            world_size=data["world_size"],
            total_steps=data["total_steps"],
            deepspeed=data["deepspeed"],
            deepspeed_sources=data["deepspeed_sources"],
            dpo=DpoConfig(**data.get("dpo", {})),
            lora=LoraConfig(**data.get("lora", {})),  # runs saved before LoRA existed have none
            embedding_transplant=data.get("embedding_transplant", {}),
        )

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# OptimConfig fields the DeepSpeed JSON binds (same names in RunValues): the JSON may be filled from them,
# contradict them, or (when the option was not given) be adopted into them.
DEEPSPEED_OPTIM_FIELDS = (
    "micro_batch",
    "grad_accum",
    "lr",
    "weight_decay",
    "betas",
    "eps",
    "warmup_steps",
    "lr_schedule",
    "min_lr_ratio",
    "clip_grad",
    "precision",
)
DEEPSPEED_PARALLEL_FIELDS = ("tensor_parallel", "pipeline_stages", "sequence_parallel", "gpus_per_node")
"""ParallelConfig fields the DeepSpeed JSON binds (same names in RunValues)."""


def run_values(
    optim: OptimConfig,
    parallel: ParallelConfig,
    *,
    world_size: int,
    explicit: frozenset[str],
    total_steps: int,
    hidden_size: int | None = None,
    num_heads: int | None = None,
    kv_heads: int | None = None,
    cpu_only: bool | None = None,
) -> RunValues:
    """The values a DeepSpeed JSON is resolved against, from the sections: the one mapping `scaling train`,
    `scaling config` and `scaling estimate` share. `explicit` names the options the user gave."""
    bound = (*DEEPSPEED_OPTIM_FIELDS, *DEEPSPEED_PARALLEL_FIELDS)
    given_steps = optim.max_steps is not None and "max_steps" in explicit
    return RunValues(
        **{name: getattr(optim, name) for name in DEEPSPEED_OPTIM_FIELDS},
        **{name: getattr(parallel, name) for name in DEEPSPEED_PARALLEL_FIELDS},
        total_steps=total_steps,
        world_size=world_size,
        hidden_size=hidden_size,
        num_heads=num_heads,
        kv_heads=kv_heads,
        cpu_only=cpu_only,
        explicit=frozenset(name for name in explicit if name in bound)
        | (frozenset({"total_steps"}) if given_steps else frozenset()),
    )


def check_sections(
    model: ModelConfig, data: DataConfig, optim: OptimConfig, ckpt: CheckpointConfig
) -> list[Problem]:
    """Checks of the typed sections that need no file reads beyond existence."""
    problems = []
    if model.task not in TASKS:
        problems.append(Problem("--task", f"must be one of {', '.join(TASKS)}", model.task))
    if optim.on_nan not in ON_NAN:
        problems.append(Problem("--on-nan", f"must be one of {', '.join(ON_NAN)}", optim.on_nan))
    if not data.train:
        problems.append(Problem("--data", "at least one training source is required"))
    if optim.max_steps is None and optim.epochs is None:
        problems.append(Problem("--max-steps", "give --max-steps or --epochs"))
    if optim.max_steps is not None and optim.max_steps < 1:
        problems.append(Problem("--max-steps", "must be at least 1", optim.max_steps))
    if optim.epochs is not None and optim.epochs <= 0:
        problems.append(Problem("--epochs", "must be positive", optim.epochs))
    if ckpt.keep_last < 1:
        problems.append(Problem("--keep-last", "must keep at least 1 checkpoint", ckpt.keep_last))
    return problems


def resolve_run(
    *,
    model: ModelConfig,
    data: DataConfig,
    optim: OptimConfig,
    checkpoint: CheckpointConfig,
    log: LogConfig,
    parallel: ParallelConfig,
    deepspeed_source: DeepSpeedSource,
    world_size: int,
    explicit: frozenset[str],
    hidden_size: int | None,
    num_heads: int | None = None,
    kv_heads: int | None = None,
    devices: Devices | None = None,
    ranks_here: int | None = None,
    total_steps: int,
    cpu_only: bool | None = None,
    dpo: DpoConfig | None = None,
    lora: LoraConfig | None = None,
) -> RunConfig:
    """Resolve the DeepSpeed JSON against the run options and return the complete run.

    `explicit` names the options the user gave (others yield to values written in the JSON); `cpu_only`
    None asks this machine (scaling.config.device). `devices`: the machine the ranks run on, checked against
    the run (precision, writable paths, and `ranks_here`, the ranks started on it, when known); None when
    they run elsewhere.
    Raises ConfigError with every problem found.
    """
    problems = check_sections(model, data, optim, checkpoint)
    if devices is not None and cpu_only is None:
        cpu_only = devices.gpus == 0
    values = run_values(
        optim,
        parallel,
        world_size=world_size,
        explicit=explicit,
        total_steps=total_steps,
        hidden_size=hidden_size,
        num_heads=num_heads,
        kv_heads=kv_heads,
        cpu_only=cpu_only,
    )
    resolved: ResolvedDeepSpeed | None = None
    try:
        resolved = resolve_deepspeed(deepspeed_source.config, deepspeed_source.overrides, values)
    except ConfigError as err:
        problems.extend(err.problems)
    if devices is not None:
        problems.extend(_machine_problems(resolved, values, checkpoint, ranks_here, devices))
    if problems:
        raise ConfigError(problems, header="cannot start this run")
    assert resolved is not None
    adopted = {name: getattr(resolved.run, name) for name in DEEPSPEED_OPTIM_FIELDS}
    optim = dataclasses.replace(optim, **adopted)
    # Degrees written in the JSON (where the option was left at its default) lay out the run too.
    parallel = dataclasses.replace(
        parallel,
        tensor_parallel=resolved.run.tensor_parallel,
        pipeline_stages=resolved.run.pipeline_stages,
        sequence_parallel=resolved.run.sequence_parallel,
    )
    return RunConfig(
        model=model,
        data=data,
        optim=optim,
        checkpoint=checkpoint,
        log=log,
        parallel=parallel,
        deepspeed_source=deepspeed_source,
        world_size=world_size,
        total_steps=resolved.run.total_steps,
        deepspeed=resolved.config,
        deepspeed_sources=resolved.sources,
        dpo=dpo or DpoConfig(),
        lora=lora or LoraConfig(),
    )


def _machine_problems(
    resolved: ResolvedDeepSpeed | None,
    values: RunValues,
    checkpoint: CheckpointConfig,
    ranks_here: int | None,
    devices: Devices,
) -> list[Problem]:
    """The run as far as it resolved (the options alone when the JSON did not) against this machine."""
    precision = resolved.run.precision if resolved is not None else values.precision
    given = "option --precision" if "precision" in values.explicit else "default of --precision"
    source = resolved.sources.get(f"{precision}.enabled", given) if resolved is not None else given
    return hardware_problems(
        precision=precision,
        precision_source=source.split(" (")[0],
        deepspeed=resolved.config if resolved is not None else {},
        output=checkpoint.output,
        ranks_here=ranks_here,
        devices=devices,
    )
