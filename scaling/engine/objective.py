"""Objectives: what a run trains its model to do, independent of how the model is laid out on the ranks.

An objective owns the model to train (it builds it), the loss of one micro-batch, the eval metrics, and any
state of its own (a teacher is loaded, not saved; a projection trained beside the model is saved). The
layout (scaling.engine.layout) owns the engine and decides how a micro-batch reaches the objective:

- whole-sequence layouts (plain/ZeRO, AutoTP) call `loss(model, batch)` and `eval_totals(model, batch)`
  with the full micro-batch and the engine as `model`;
- the sequence-parallel layout (Ulysses) calls `shard_loss(model, shard)` / `shard_eval_totals(model,
  shard)` with this rank's `SequenceShard`; the objective returns per-token sums through `shard.group_mean`
  so every rank's value is the group's mean;
- the pipeline layout runs DeepSpeed's `train_batch`, whose loss is built into the pipeline module: only an
  objective with `pipeline_loss = True` (language modelling) can run there.

Eval totals are `{name: (weighted sum, weight)}` per batch; the layout adds them over batches and ranks and
`metrics(totals)` turns the sums into the logged figures (eval_loss etc.), so every layout weighs tokens the
same way.

`state_dict()` / `load_state_dict()` make the objective a stateful extra of the checkpoint (see
scaling.engine.state): its keys go into every rank's state file.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Protocol

import torch

from scaling.engine.shards import SequenceShard, token_loss_sum

if TYPE_CHECKING:
    from scaling.checkpoint.store import CheckpointRef
    from scaling.config.run import RunConfig

__all__ = ["EvalTotals", "LanguageModelling", "Objective", "objective_for"]

logger = logging.getLogger(__name__)

EvalTotals = dict[str, tuple[float, float]]
"""Per eval batch (and after the reduction): metric name -> (weighted sum, total weight)."""


class Objective(Protocol):
    """The contract between the trainer, the layouts and an objective (see the module docstring)."""

    pipeline_loss: bool
    """True when the pipeline module's built-in language-modelling loss is this objective's loss."""

    def build_model(self, run: RunConfig, tokenizer: Any) -> Any:
        """The HF model to train (called by the layout at the point its engine needs it)."""

    def attach(self, engine: Any) -> None:
        """The engine exists: build what the objective needs beside it (a teacher, a projection)."""

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of a whole micro-batch (a scalar to run backward on)."""

    def shard_loss(self, model: Any, shard: SequenceShard) -> torch.Tensor:
        """The training loss under sequence parallelism: the group's mean, through this rank's shard."""

    def eval_totals(self, model: Any, batch: dict[str, torch.Tensor]) -> EvalTotals: ...

    def shard_eval_totals(self, model: Any, shard: SequenceShard) -> EvalTotals: ...

    def metrics(self, totals: EvalTotals) -> dict[str, float]:
        """Logged eval figures from the reduced totals."""

    def train_metrics(self) -> dict[str, float]:
        """Figures of the training micro-batches since the last call, added to each log record beside the loss
        (collective: every rank calls it at every log step)."""

    def after_step(self, engine: Any, lr: float) -> None:
        """After every optimizer step (the engine's): step what the objective trains outside the engine."""

    def before_commit(self, ref: CheckpointRef, rank: int) -> None:
        """Extra files in a checkpoint, on every rank, before the manifest commits it."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def objective_for(run: RunConfig) -> Objective:
    """The objective `run.model.task` trains: DPO for dpo, else the model's own language-modelling task."""
    if run.model.task == "dpo":
        from scaling.engine.dpo import DpoObjective

        return DpoObjective(run)
    return LanguageModelling(run.model.task)


def ratio(totals: EvalTotals, name: str) -> float:
    """sum / weight of one reduced eval figure (an empty weight counts as 1, like clamp(min=1))."""
    value, weight = totals[name]
    return value / max(weight, 1.0)


class LanguageModelling:
    """The model's own task loss, per `run.model.task`: causal LM (clm), masked LM (mlm), sequence
    classification (seq-cls), or chat SFT (sft: the causal-LM loss on the labels the data pipeline masked to
    the assistant turns). Eval: token-weighted loss (clm: next-token targets, mlm: masked positions) and
    perplexity, or sample-weighted loss and accuracy for seq-cls. No state of its own."""

    pipeline_loss = True

    def __init__(self, task: str) -> None:
        self.task = task

    def build_model(self, run: RunConfig, tokenizer: Any) -> Any:
        from scaling.engine.build import make_model

        model = make_model(run, tokenizer)
        if run.model.fused_loss and self.task in ("clm", "sft"):
            from scaling.engine.fused_loss import enable_fused_loss, fused_loss_blocker

            blocker = fused_loss_blocker(
                model,
                task=self.task,
                zero_stage=run.zero_stage,
                tensor_parallel=run.parallel.tensor_parallel,
                pipeline=run.parallel.pipeline_stages > 1,
            )
            if blocker is None:
                enable_fused_loss(model)
                logger.info("fused loss: on (chunked output head + cross-entropy, no full logits)")
            else:
                logger.info("fused loss: off (%s)", blocker)
        return model

    def attach(self, engine: Any) -> None:
        """Language modelling needs nothing beside the engine."""

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def shard_loss(self, model: Any, shard: SequenceShard) -> torch.Tensor:
        local_sum, count = self.shard_sums(model, shard)
        return shard.group_mean(local_sum, count)

    def shard_sums(self, model: Any, shard: SequenceShard, **extra: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy of this shard and its target count (clm only)."""
        logits = model(**shard.inputs, use_cache=False, **extra).logits
        return token_loss_sum(logits, shard.shift_labels)

    def targets(self, labels: torch.Tensor) -> int:
        """The weight of a batch's loss: the positions it averages over."""
        if self.task == "seq-cls":
            return labels.numel()
        if self.task in ("clm", "sft"):
            return int((labels[:, 1:] != -100).sum())
        return int((labels != -100).sum())

    def output_totals(self, out: Any, labels: torch.Tensor) -> EvalTotals:
        """Eval totals from the model's outputs on a whole batch."""
        count = self.targets(labels)
        totals = {"loss": (float(out.loss) * count, float(count))}
        if self.task == "seq-cls":
            totals["accuracy"] = (float((out.logits.argmax(-1) == labels).sum().item()), float(count))
        return totals

    def eval_totals(self, model: Any, batch: dict[str, torch.Tensor]) -> EvalTotals:
        return self.output_totals(model(**batch), batch["labels"])

    def shard_eval_totals(self, model: Any, shard: SequenceShard) -> EvalTotals:
        local_sum, count = self.shard_sums(model, shard)
        return {"loss": (float(local_sum), float(count))}

    def metrics(self, totals: EvalTotals) -> dict[str, float]:
        loss = ratio(totals, "loss")
        metrics = {"eval_loss": loss}
        if "accuracy" in totals:
            metrics["eval_accuracy"] = ratio(totals, "accuracy")
        else:
            metrics["eval_perplexity"] = math.exp(min(loss, 50.0))
        return metrics

    def train_metrics(self) -> dict[str, float]:
        """The loss the step window logs is all there is."""
        return {}

    def after_step(self, engine: Any, lr: float) -> None:
        """No parameters outside the engine to step."""

    def before_commit(self, ref: CheckpointRef, rank: int) -> None:
        """No files of its own in a checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """No state of its own (see state_dict)."""
