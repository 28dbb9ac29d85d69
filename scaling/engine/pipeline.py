"""Pipeline-parallel layout: the HF decoder split into stages, run by DeepSpeed's PipelineEngine.

The engine runs all `grad_accum` micro-batches of a step itself (`train_batch`), interleaving forward and
backward passes of different micro-batches across stages (1F1B). Only the first stage consumes inputs and only
the last stage consumes labels; middle stages read no data at all. The loss is the pipeline module's own
causal-LM loss on the last stage, so only objectives whose loss that is (`pipeline_loss`) run here: a
distillation teacher would have to be evaluated per stage, which this layout does not do (refused before
launch, see scaling.compress.distill).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from scaling.compat.deepspeed import count_every_pipeline_param_in_clip_norm
from scaling.engine.layout import Layout, StepLoop
from scaling.engine.state import position_seed
from scaling.engine.step_window import NonFiniteLoss, SigtermFlag, StepWindow, count_targets, count_tokens
from scaling.errors import UserError

if TYPE_CHECKING:
    from scaling.engine.objective import Objective

__all__ = ["PipelineLayout"]


class PipelineLayout(Layout):
    """The engine is a PipelineEngine over `run.parallel.pipeline_stages` stages."""

    name = "pipeline"

    def build_engine(self, objective: Objective, tokenizer: Any) -> tuple[Any, Any]:
        from scaling.models.pipe import build_pipeline_module

        if not objective.pipeline_loss:
            raise UserError(
                f"{type(objective).__name__} cannot run pipelined: the pipeline engine computes its own "
                "language-modelling loss on the last stage"
            )
        run = self.run
        # Build the whole HF model on every rank from the same seed, then keep this stage's layers: every
        # stage starts from exactly the weights the unpipelined model would have.
        model = objective.build_model(run, tokenizer)
        if run.model.activation_checkpointing:
            model.gradient_checkpointing_disable()  # the pipeline checkpoints whole layers itself
        pipe_cfg = (
            run.deepspeed.get("pipeline", {}) if isinstance(run.deepspeed.get("pipeline"), dict) else {}
        )
        interval = int(pipe_cfg.get("activation_checkpoint_interval", 0) or 0)
        if run.model.activation_checkpointing and interval == 0:
            interval = 1
        module = build_pipeline_module(
            model,
            num_stages=run.parallel.pipeline_stages,
            partition=run.parallel.partition_method,
            activation_checkpoint_interval=interval,
            variable_length=not run.data.packing,
        )
        engine = self.initialize_engine(module)
        if run.zero_stage == 0:
            count_every_pipeline_param_in_clip_norm(module, self.rank)
        self.is_first_stage = engine.is_first_stage()
        self.is_last_stage = engine.is_last_stage()
        self.engine = engine
        return engine, model.config

    def _micro_batches(self, loop: StepLoop) -> list[dict[str, torch.Tensor]]:
        if not (self.is_first_stage or self.is_last_stage):
            return []
        return [loop.next_batch() for _ in range(self.run.optim.grad_accum)]

    def train_step(self, loop: StepLoop, step: int, window: StepWindow, sigterm: SigtermFlag) -> bool:
        from scaling.models.pipe import pipe_inputs

        engine = self.engine
        lr = float(engine.get_lr()[0])
        window.note_lr(lr)
        started = time.perf_counter()
        batches = self._micro_batches(loop)
        data_wait = time.perf_counter() - started
        # One seed per step: the engine interleaves micro-batches, so a per-micro-step reseed is not ours
        # to place; dropout still replays exactly after a resume because the seed depends on the step only.
        torch.manual_seed(position_seed(self.run.optim.seed, step, 0, self.rank))
        loss = engine.train_batch(data_iter=iter([pipe_inputs(b) for b in batches]))
        bad_ranks, stop_requested = loop.agree(loss, sigterm.raised)
        if bad_ranks:
            # The step is already applied: the pipeline cannot leave out a single micro-batch.
            raise NonFiniteLoss(
                f"non-finite loss at step {step + 1} (pipeline runs stop: a pipelined step cannot skip "
                "single micro-batches)"
            )
        window.add_micro(loss.detach())
        loop.objective.after_step(engine, lr)
        tokens = sum(count_tokens(b) for b in batches) if self.is_first_stage else 0
        targets = sum(count_targets(b, causal=True) for b in batches) if self.is_first_stage else 0
        window.end_step(time.perf_counter() - started, data_wait, tokens, targets)
        return stop_requested

    @torch.no_grad()
    def evaluate(self, objective: Objective, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Token-weighted eval loss, as the other layouts report it: one pipeline pass per batch, so each
        batch's mean loss can be weighted by its own number of targets."""
        from scaling.models.pipe import pipe_inputs

        engine = self.engine
        totals = torch.zeros(2, dtype=torch.float64, device=engine.device)  # summed token loss, targets
        for batch in batches:
            # Unreduced and not broadcast: the default averages each batch's loss over the data-parallel
            # replicas before we could weight it by this replica's own targets.
            outputs = engine.eval_batch(
                iter([pipe_inputs(batch)]), num_micro_batches=1, reduce_output=None, bcast_loss=False
            )
            if self.is_last_stage:
                targets = int((batch["labels"][:, 1:] != -100).sum())
                totals[0] += float(outputs[0]) * targets
                totals[1] += targets
        # Each replica's last stage holds its figures; the all-reduce adds the replicas.
        if dist.is_initialized():
            dist.all_reduce(totals)
        engine.train()
        value = float(totals[0] / totals[1].clamp(min=1))
        return {"eval_loss": value, "eval_perplexity": math.exp(min(value, 50.0))}
