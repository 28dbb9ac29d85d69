"""Typed configuration sections. Each component receives only its own section."""

from __future__ import annotations

from dataclasses import dataclass, field

TASKS = ("clm", "mlm", "seq-cls")
PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("linear", "cosine", "constant")
ON_NAN = ("stop", "skip")


@dataclass(kw_only=True)
class ModelConfig:
    """Which model to train and how to build it."""

    source: str
    """An HF model directory (weights loaded offline), a config.json (random init), or a preset name."""
    task: str = "clm"
    """clm (causal LM), mlm (masked LM) or seq-cls (sequence classification)."""
    tokenizer: str | None = None
    """Tokenizer directory; None means the model's own, or one trained on the data for presets/bare configs."""
    num_labels: int = 2
    """Classes for seq-cls."""
    vocab_size: int = 4096
    """Vocabulary of a tokenizer trained for a preset or bare config."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward to save memory."""


@dataclass(kw_only=True)
class OptimConfig:
    """Optimizer, schedule and numerics of the training loop."""

    micro_batch: int = 8
    """Samples per rank per forward pass."""
    grad_accum: int = 1
    """Micro-batches accumulated before each optimizer step."""
    lr: float = 5e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled (AdamW) weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    warmup_steps: int = 0
    """Steps of linear warmup from 0 to lr."""
    max_steps: int | None = None
    """Optimizer steps to run; None derives it from epochs."""
    epochs: float | None = None
    """Passes over the training data when max_steps is not given."""
    lr_schedule: str = "linear"
    """Decay after warmup: linear to 0, cosine to min_lr_ratio * lr, or constant."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine schedule as a fraction of lr."""
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 disables it."""
    precision: str = "bf16"
    """fp32, bf16 or fp16 (fp16 needs a GPU)."""
    seed: int = 42
    """Seed of model init, data order, dropout and augmentation."""
    on_nan: str = "stop"
    """What a non-finite loss does: stop the run, or skip the step and count it."""


@dataclass(kw_only=True)
class CheckpointConfig:
    """Where and how often the run saves, and what it resumes from."""

    output: str
    """Run directory: checkpoints, metrics, the resolved config, the final export."""
    save_every: int = 0
    """Save every N optimizer steps (0: only at the end)."""
    keep_last: int = 3
    """Complete checkpoints to keep; older ones are deleted (never the one `latest` names)."""
    resume: str | None = None
    """'auto' (latest complete checkpoint in output, if any), a checkpoint path, or None (start fresh)."""
    export_final: bool = True
    """Write an HF model directory to OUTPUT/final at the end."""
    halt_at_step: int | None = None
    """Save and stop after this step without finishing the schedule (time-boxed jobs); resume continues."""


@dataclass(kw_only=True)
class LogConfig:
    """What the run reports and how often."""

    log_every: int = 10
    """Log metrics every N steps (on rank 0)."""
    eval_every: int = 0
    """Evaluate every N steps (0: only at the end, when eval data is given)."""
    eval_batches: int = 50
    """Upper bound on eval micro-batches per evaluation."""
    tensorboard: bool = True
    """Write TensorBoard event files under OUTPUT/tensorboard."""
    progress: bool = True
    """Show a progress bar on the console."""


@dataclass(kw_only=True)
class ParallelConfig:
    """Model-parallel degrees and distributed timeouts; data parallelism takes the rest of the world."""

    tensor_parallel: int = 1
    """AutoTP degree."""
    pipeline_stages: int = 1
    """Pipeline-parallel degree."""
    sequence_parallel: int = 1
    """Ulysses sequence-parallel degree: consecutive ranks that split every sequence (causal LMs)."""
    gpus_per_node: int | None = None
    """Ranks per node, when known at resolution (for hierarchical ZeRO++ partitions)."""
    partition_method: str = "parameters"
    """How pipeline layers are split: parameters, uniform or type:<BlockClass>."""
    dist_timeout_s: float = 300.0
    """Collective timeout after the first step; a dead or hung rank ends the job within this bound."""
    init_timeout_s: float = 900.0
    """Collective timeout during start-up and the first step (compilation, data loading)."""


@dataclass(kw_only=True)
class DeepSpeedSource:
    """Where the DeepSpeed JSON comes from, before resolution."""

    config: str | None = None
    """A JSON path or a preset name from ds_configs/; None uses the zero2 preset."""
    overrides: list[str] = field(default_factory=list)
    """KEY=VALUE edits, dotted paths into the JSON, applied after the file."""
