"""Distillation as an objective of the composed trainer: the student is the model trained, a frozen teacher
supplies soft labels (and hidden states / attention maps), see scaling.compress.distill_loss for the loss.

It runs on every layout where the teacher's outputs line up with the student's:
- plain data parallelism / ZeRO: each rank keeps a full teacher, or under ZeRO-3 the teacher gets its own
  DeepSpeed engine, partitioned with ZeRO-3 and without an optimizer (scaling.engine.frozen), so a teacher
  larger than one rank's share never sits whole on any rank;
- AutoTP: the sharded student's outputs are whole on every tensor peer, so the loss is the plain one
  (attention maps are not: the eager attention of a sharded layer returns its own heads only);
- Ulysses: the teacher runs on the whole micro-batch every sequence peer holds (it is not sequence-parallel:
  its memory is that of the plain layout), and each rank compares its own slice of positions; task, KL and
  hidden-state terms are summed per token and made the group's mean (scaling.engine.shards), so the value
  equals the one-rank loss (attention maps are not available: Ulysses attention returns no weights);
- not the pipeline: its engine computes a language-modelling loss on the last stage from labels alone.

`parallel_problems(cfg, parallel)` says which combination is refused and why; the objective raises it as a
UserError on every rank too. State of its own (rank state keys): `distill` (the settings a resume must not
change) and, when the student is narrower than the teacher, `projection` / `projection_optim`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch

from scaling.compress.distill import DISTILL_CONFIG_FILE, LOSS_FIELDS
from scaling.compress.distill_loss import (
    LossParts,
    aligned_logits,
    default_layer_map,
    distill_loss,
    kd_loss,
    kd_per_position,
    kd_positions,
)
from scaling.engine.frozen import build_frozen, run_dtype
from scaling.engine.objective import EvalTotals, LanguageModelling, ratio
from scaling.engine.shards import IGNORE, SequenceShard, gradient_factor, token_loss_sum
from scaling.engine.step_window import loss_scale
from scaling.errors import UserError

if TYPE_CHECKING:
    from scaling.checkpoint.store import CheckpointRef
    from scaling.compress.distill import DistillConfig
    from scaling.config.run import RunConfig

__all__ = ["DistillObjective", "parallel_problems"]


def parallel_problems(cfg: DistillConfig | None, parallel: Any) -> list[tuple[str, str, Any]]:
    """(option, reason, value) for each parallel degree this distillation cannot run with."""
    out = []
    if parallel.pipeline_stages > 1:
        out.append(
            (
                "--pipeline-stages",
                "distillation does not run pipelined: the pipeline engine computes a language-modelling loss "
                "on its last stage from the labels alone, and the teacher cannot be evaluated per stage there",
                parallel.pipeline_stages,
            )
        )
    if cfg is None:
        return out
    if cfg.attention_loss > 0:
        for option, value in (
            ("--tensor-parallel", parallel.tensor_parallel),
            ("--sequence-parallel", parallel.sequence_parallel),
        ):
            if value > 1:
                out.append(
                    (
                        option,
                        "--attention-loss needs whole attention maps; a tensor- or sequence-parallel student "
                        "computes only its share of the heads",
                        value,
                    )
                )
    return out


class DistillObjective:
    """The student's task loss blended with the teacher's soft labels (and optional hidden/attention terms).

    Owns the teacher (built in `attach`, frozen, never saved) and, for a student narrower than the teacher
    with --hidden-loss, a projection trained beside the engine with its own AdamW (its gradients are averaged
    over the ranks by hand in `after_step`)."""

    pipeline_loss = False

    def __init__(self, run: RunConfig, distill: DistillConfig) -> None:
        problems = parallel_problems(distill, run.parallel)
        if problems:
            raise UserError(
                "cannot distil with this layout: " + "; ".join(f"{o} {v}: {why}" for o, why, v in problems)
            )
        self.run = run
        self.distill = distill
        self.task = run.model.task
        self.lm = LanguageModelling(self.task)
        self.teacher: Any = None
        self.projection: Any = None
        self.projection_optim: Any = None
        self.layer_pairs: list[tuple[int, int]] | None = None
        self.last_parts: LossParts | None = None

    @property
    def wants_hidden(self) -> bool:
        return self.distill.hidden_loss > 0

    @property
    def wants_attention(self) -> bool:
        return self.distill.attention_loss > 0

    # -- building -------------------------------------------------------------------------------------

    def build_model(self, run: RunConfig, tokenizer: Any) -> Any:
        """The student (run.model.source names its directory once the run is prepared). Built plainly, never
        with the fused loss: distillation reads the student's logits."""
        from scaling.engine.build import make_model

        return make_model(run, tokenizer)

    def attach(self, engine: Any) -> None:
        from scaling.compress.student import num_layers
        from scaling.models.load import hidden_size_of

        if self.wants_attention:
            # sdpa returns no attention probabilities; eager computes the same function and does.
            engine.module.set_attn_implementation("eager")
        self.teacher = self._build_teacher(engine.device)
        s_config, t_config = engine.module.config, self.teacher_module().config
        if self.wants_hidden or self.wants_attention:
            layer_map = self.distill.layer_map or default_layer_map(
                num_layers(s_config), num_layers(t_config), self.distill.kept_layers
            )
            self.layer_pairs = list(enumerate(layer_map))
        s_width, t_width = hidden_size_of(s_config), hidden_size_of(t_config)
        if self.wants_hidden and s_width != t_width:
            assert s_width is not None and t_width is not None
            # Trained alongside the student but not part of it (the export stays a plain student), so it
            # has its own optimizer.
            generator = torch.Generator().manual_seed(self.run.optim.seed)
            self.projection = torch.nn.Linear(s_width, t_width, bias=False)
            with torch.no_grad():
                bound = 1.0 / math.sqrt(s_width)
                self.projection.weight.uniform_(-bound, bound, generator=generator)
            self.projection.to(engine.device)
            optim = self.run.optim
            self.projection_optim = torch.optim.AdamW(
                self.projection.parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=0.0
            )

    def teacher_module(self) -> Any:
        """The teacher's HF model (inside its ZeRO-3 engine when it has one)."""
        return getattr(self.teacher, "module", self.teacher)

    def _build_teacher(self, device: Any) -> Any:
        from scaling.models import model_class_for

        run = self.run
        assert self.distill.teacher_dir is not None
        kwargs: dict[str, Any] = {"local_files_only": True, "dtype": run_dtype(run)}
        if self.wants_attention:
            kwargs["attn_implementation"] = "eager"
        cls = model_class_for(run.model.task)
        return build_frozen(run, lambda: cls.from_pretrained(self.distill.teacher_dir, **kwargs), device)

    # -- the loss -------------------------------------------------------------------------------------

    def _teacher_outputs(self, batch: dict[str, torch.Tensor], **extra: Any) -> Any:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            return self.teacher(**inputs, **extra)

    def _extra_outputs(self) -> dict[str, bool]:
        extra = {}
        if self.wants_hidden:
            extra["output_hidden_states"] = True
        if self.wants_attention:
            extra["output_attentions"] = True
        return extra

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        extra = self._extra_outputs()
        student = model(**batch, **extra)
        teacher = self._teacher_outputs(batch, **extra)
        parts = distill_loss(
            self.distill,
            self.task,
            student,
            teacher,
            batch,
            layer_pairs=self.layer_pairs,
            projection=self.projection,
        )
        self.last_parts = parts
        return parts.total

    def _shard_sums(
        self, model: Any, shard: SequenceShard, *, hidden: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """This shard's summed task cross-entropy, summed KL, target count (clm) and, with `hidden`, the
        group mean of the hidden-state MSE."""
        extra = {"output_hidden_states": True} if hidden else {}
        student = model(**shard.inputs, use_cache=False, **extra)
        teacher = self._teacher_outputs(shard.batch, **extra)
        logits = student.logits
        task_sum, count = token_loss_sum(logits, shard.shift_labels)
        mask = (shard.shift_labels != IGNORE).to(torch.float32)
        kd = kd_per_position(logits, shard.take(teacher.logits), self.distill.temperature)
        hidden_mean = self._shard_hidden(student, teacher, shard) if hidden else None
        return task_sum, (kd * mask).sum(), count, hidden_mean

    def _shard_hidden(self, student: Any, teacher: Any, shard: SequenceShard) -> torch.Tensor:
        """hidden_mse of the whole sequence as the group's mean: per-token errors of this shard's real tokens
        summed over the layer pairs, over the group's real tokens (every pair counts the same tokens)."""
        assert self.layer_pairs is not None
        ids = shard.batch["input_ids"]
        token_mask = shard.batch.get("attention_mask")
        mask = shard.take(torch.ones_like(ids) if token_mask is None else token_mask).float()
        pairs = [(0, 0)] + [(s + 1, t + 1) for s, t in self.layer_pairs]
        local = torch.zeros((), device=mask.device)
        for s, t in pairs:
            hs = student.hidden_states[s].float()
            if self.projection is not None:
                hs = self.projection(hs)
            per_token = (hs - shard.take(teacher.hidden_states[t]).float()).pow(2).mean(-1)
            local = local + (per_token * mask).sum()
        return shard.group_mean(local, mask.sum()) / len(pairs)

    def shard_loss(self, model: Any, shard: SequenceShard) -> torch.Tensor:
        cfg = self.distill
        task_sum, kd_sum, count, hidden = self._shard_sums(model, shard, hidden=self.wants_hidden)
        # Both terms average over the same targets, so one group mean of the blend is the blend of the means.
        blend = cfg.alpha * task_sum + (1.0 - cfg.alpha) * cfg.temperature**2 * kd_sum
        total = shard.group_mean(blend, count)
        if hidden is not None:
            total = total + cfg.hidden_loss * hidden
        self.last_parts = LossParts(total=total, task=float("nan"), kd=float("nan"))
        return total

    # -- evaluation -----------------------------------------------------------------------------------

    def eval_totals(self, model: Any, batch: dict[str, torch.Tensor]) -> EvalTotals:
        """The student's task totals plus the KL to the teacher at T (per predicted token or sample)."""
        student = model(**batch)
        totals = self.lm.output_totals(student, batch["labels"])
        teacher = self._teacher_outputs(batch)
        s, t = aligned_logits(self.task, student.logits, teacher.logits)
        mask = kd_positions(self.task, batch["labels"])
        count = float(mask.sum()) if mask is not None else float(s.shape[0])
        totals["kd"] = (float(kd_loss(s, t, mask, self.distill.temperature)) * count, count)
        return totals

    def shard_eval_totals(self, model: Any, shard: SequenceShard) -> EvalTotals:
        task_sum, kd_sum, count, _ = self._shard_sums(model, shard)
        return {"loss": (float(task_sum), float(count)), "kd": (float(kd_sum), float(count))}

    def metrics(self, totals: EvalTotals) -> dict[str, float]:
        """The student's task metrics plus `eval_kd_loss`: KL(teacher || student) at T on the eval data."""
        metrics = self.lm.metrics({k: v for k, v in totals.items() if k != "kd"})
        metrics["eval_kd_loss"] = ratio(totals, "kd")
        return metrics

    def train_metrics(self) -> dict[str, float]:
        """The blended loss the step window logs is all there is."""
        return {}

    # -- the projection, checkpoints ------------------------------------------------------------------

    def after_step(self, engine: Any, lr: float) -> None:
        """Step the projection with the student's learning rate. Its gradients are summed over the ranks and
        made the mean over data-parallel replicas: tensor peers computed identical ones (divide by the world);
        sequence peers computed shares of their group's gradient, each scaled like the engine's by the
        group-mean factor (see scaling.engine.shards.gradient_factor). The fp16 loss scale comes off too."""
        if self.projection is None:
            return
        import torch.distributed as dist

        scale = loss_scale(engine) or 1.0
        world = dist.get_world_size() if dist.is_initialized() else 1
        sp = self.run.parallel.sequence_parallel
        replicas = world * gradient_factor(self.run.zero_stage, sp) / sp
        for param in self.projection.parameters():
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            if world > 1:
                dist.all_reduce(param.grad)
            param.grad.div_(replicas * scale)
        for group in self.projection_optim.param_groups:
            group["lr"] = lr
        self.projection_optim.step()
        self.projection_optim.zero_grad(set_to_none=True)

    def before_commit(self, ref: CheckpointRef, rank: int) -> None:
        """The distillation settings beside run_config.json in every checkpoint, readable without torch (the
        rank states keep a copy for the resume check)."""
        if rank == 0:
            from scaling.checkpoint.store import atomic_write_text

            atomic_write_text(ref.ours / DISTILL_CONFIG_FILE, self.distill.to_json())

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"distill": dataclasses.asdict(self.distill)}
        if self.projection is not None:
            state["projection"] = self.projection.state_dict()
            state["projection_optim"] = self.projection_optim.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("distill")
        if saved is not None:
            changed = [k for k in LOSS_FIELDS if saved.get(k) != getattr(self.distill, k)]
            if changed:
                raise UserError(
                    "cannot resume: the checkpoint was distilled with different "
                    + ", ".join(f"{k} ({saved.get(k)} -> {getattr(self.distill, k)})" for k in changed)
                )
        if self.projection is not None:
            if "projection" not in state:
                raise UserError("cannot resume: the checkpoint has no hidden-state projection")
            self.projection.load_state_dict(state["projection"])
            self.projection_optim.load_state_dict(state["projection_optim"])
