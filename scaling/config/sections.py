"""Typed configuration sections. Each component receives only its own section.

A field declared with `option(...)` is also a command-line option of every command that takes its section;
its docstring is the option's help text (see scaling.config.cli_options).
"""

from __future__ import annotations

from dataclasses import dataclass

from scaling.config.fields import option

TASKS = ("clm", "mlm", "seq-cls", "sft", "dpo")
PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("linear", "cosine", "constant")
ON_NAN = ("stop", "skip")
TRACKERS = ("tensorboard", "wandb", "mlflow", "csv")
"""What --report-to accepts."""
EMBEDDING_INITS = ("transplant", "random")
ASSUMED_GPUS_PER_NODE = 8
"""Ranks per node assumed where the node size is unknown (ZeRO++ hpZ partitions, memory estimates)."""


@dataclass(kw_only=True)
class ModelConfig:
    """Which model to train and how to build it."""

    source: str = option(flag="--model", param="model", metavar="DIR|CONFIG|PRESET")
    """An HF model directory (weights loaded offline), a config.json (random init) or a preset (tiny-gpt2,
    tiny-llama, tiny-bert)."""
    task: str = option("clm", choices=TASKS)
    """clm (causal LM), mlm (masked LM), seq-cls (sequence classification), sft (chat fine-tuning of a
    causal LM on conversations, loss on the assistant turns) or dpo (preference tuning of a causal LM on
    chosen/rejected answer pairs)."""
    tokenizer: str | None = option(None)
    """Tokenizer directory (default: the model's own, or one trained on --data for presets and bare configs)."""
    embedding_init: str = option("transplant", choices=EMBEDDING_INITS)
    """With a --tokenizer other than a pretrained model's own: 'transplant' gives each new token the old row of
    the same token, else the mean of the old rows of the pieces the old tokenizer splits it into (special
    tokens by role); 'random' draws every row afresh. Input and untied output embeddings alike."""
    chat_template: str | None = option(None, metavar="chatml|llama3|FILE")
    """sft, dpo: the chat template, 'chatml', 'llama3' or a Jinja file (default: the tokenizer's own; ChatML,
    with its special tokens added, for a tokenizer trained here)."""
    num_labels: int = option(2, min=2)
    """Classes for seq-cls."""
    vocab_size: int = option(4096, min=64)
    """Vocabulary of a tokenizer trained for a preset or bare config."""
    activation_checkpointing: bool = option(False)
    """Recompute each block's activations in backward to save memory."""
    fused_loss: bool = option(True)
    """clm/sft: compute the output head and cross-entropy in chunks, never the full [tokens, vocab] logits (the
    same loss and gradients; used where exact: not under ZeRO-3, AutoTP, pipeline stages or logit
    post-processing, where the run says why it is off)."""


@dataclass(kw_only=True)
class OptimConfig:
    """Optimizer, schedule and numerics of the training loop."""

    micro_batch: int = option(8, min=1)
    """Samples per rank per forward pass."""
    grad_accum: int = option(1, min=1)
    """Micro-batches accumulated before each optimizer step."""
    lr: float = option(5e-4, min=0, min_open=True)
    """Peak learning rate."""
    weight_decay: float = option(0.0, min=0)
    """Decoupled (AdamW) weight decay."""
    betas: tuple[float, float] = option((0.9, 0.999))
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    warmup_steps: int = option(0, min=0)
    """Steps of linear warmup from 0 to lr."""
    max_steps: int | None = option(None, min=1)
    """Optimizer steps to run (default: derived from --epochs)."""
    epochs: float | None = option(None, min=0, min_open=True)
    """Passes over the training data when --max-steps is not given."""
    lr_schedule: str = option("linear", choices=LR_SCHEDULES)
    """Decay after warmup: linear to 0, cosine to min_lr_ratio * lr, or constant."""
    min_lr_ratio: float = option(0.0, min=0, max=1)
    """Floor of the cosine schedule as a fraction of lr."""
    clip_grad: float = option(1.0, min=0)
    """Global gradient-norm clip; 0 disables it."""
    precision: str = option("bf16", choices=PRECISIONS)
    """fp32, bf16 or fp16 (fp16 needs a GPU)."""
    seed: int = option(42)
    """Seed of model init, data order, dropout and augmentation."""
    on_nan: str = option("stop", choices=ON_NAN)
    """What a non-finite loss does: stop the run, or skip the step and count it."""


@dataclass(kw_only=True)
class DpoConfig:
    """Preference tuning (--task dpo): the settings of the DPO loss."""

    beta: float = option(0.1, flag="--dpo-beta", param="dpo_beta", min=0, min_open=True)
    """dpo: strength of the pull towards the reference model in the sigmoid DPO loss (larger: the policy
    stays closer to the reference; rewards are beta times the log-probability ratio)."""


@dataclass(kw_only=True)
class CheckpointConfig:
    """Where and how often the run saves, and what it resumes from."""

    output: str = option(path="dir")
    """Run directory (required): checkpoints, metrics, the resolved config, the final export."""
    save_every: int = option(0, min=0)
    """Save every N optimizer steps (0: only at the end)."""
    keep_last: int = option(3, min=1)
    """Complete checkpoints to keep; older ones are deleted (never the one `latest` names)."""
    resume: str | None = option(None)
    """'auto' (latest complete checkpoint in the run directory, if any) or a checkpoint path; none: start
    fresh."""
    overwrite: bool = option(False)
    """Start fresh in an OUTPUT that holds checkpoints of an earlier run, deleting them and its metrics
    (without it, such a start is refused: use --resume auto to continue that run)."""
    export_final: bool = option(True, flag="--export")
    """Write an HF model directory to OUTPUT/final at the end."""
    halt_at_step: int | None = option(None, min=1)
    """Save and stop after this step without finishing the schedule (time-boxed jobs); --resume auto
    continues the same schedule."""


@dataclass(kw_only=True)
class LogConfig:
    """What the run reports and how often."""

    log_every: int = option(10, min=1)
    """Log metrics every N steps (on rank 0)."""
    eval_every: int = option(0, min=0)
    """Evaluate every N steps (0: only at the end, when eval data is given)."""
    eval_batches: int = option(50, min=1)
    """Upper bound on eval micro-batches per evaluation."""
    tensorboard: bool = option(True)
    """Write TensorBoard event files under OUTPUT/tensorboard (the default tracker; see --report-to)."""
    report_to: list[str] = option(default_factory=list, choices=TRACKERS, metavar="NAME,...")
    """Experiment trackers besides metrics.jsonl, comma-separated: tensorboard, wandb, mlflow (optional
    extras, offline modes honoured), csv (OUTPUT/metrics.csv)."""
    early_stop_patience: int | None = option(None, min=1)
    """Stop after N evaluations (--eval-every) without a lower eval loss; the best checkpoint is kept and
    exported as OUTPUT/final."""
    progress: bool = option(True)
    """Show a progress bar on the console."""

    @property
    def trackers(self) -> list[str]:
        """The trackers this run reports to: --report-to, plus TensorBoard unless --no-tensorboard."""
        chosen = [name for name in self.report_to if name != "tensorboard"]
        return ["tensorboard", *chosen] if self.tensorboard else chosen


@dataclass(kw_only=True)
class ParallelConfig:
    """Model-parallel degrees and distributed timeouts; data parallelism takes the rest of the world."""

    tensor_parallel: int = option(1, min=1)
    """AutoTP degree: ranks that split each layer's weights."""
    pipeline_stages: int = option(1, min=1)
    """Pipeline-parallel degree: ranks that each hold a contiguous slice of the layers."""
    sequence_parallel: int = option(1, min=1)
    """Ulysses sequence-parallel degree: consecutive ranks that split every sequence (causal LMs, with
    ZeRO/DP)."""
    gpus_per_node: int | None = option(None, min=1)
    """Ranks per node, when known at resolution (ZeRO++ hpZ partitions); unknown: the launcher's, else 8
    assumed."""
    partition_method: str = option("parameters")
    """How pipeline layers are split: parameters, uniform or type:<BlockClass>."""
    dist_timeout_s: float = option(300.0, flag="--dist-timeout", param="dist_timeout", min=1)
    """Collective timeout (s) after the first step; a dead or hung rank ends the job within this bound."""
    init_timeout_s: float = 900.0
    """Collective timeout during start-up and the first step (compilation, data loading)."""


@dataclass(kw_only=True)
class DeepSpeedSource:
    """Where the DeepSpeed JSON comes from, before resolution."""

    config: str | None = option(None, flag="--ds-config", param="ds_config", metavar="FILE|PRESET")
    """DeepSpeed JSON path or preset name (default: the zero2 preset)."""
    overrides: list[str] = option(default_factory=list, flag="--set", metavar="KEY=VALUE")
    """Override a DeepSpeed JSON key after the file (dotted path; repeatable)."""
