"""The training loop, composed: one `Trainer` drives any layout with any objective.

    Trainer = layout (how the model sits on the ranks: scaling.engine.layout and its pipeline, AutoTP and
              Ulysses variants)
            + objective (what is learnt: scaling.engine.objective.LanguageModelling, DPO in
              scaling.engine.dpo, distillation in scaling.compress.distill_objective)
            + stateful extras (data stream, rng, counters, the objective's own state) gathered into each
              checkpoint's rank state (scaling.engine.state)

The trainer owns what every combination shares: the tokenizer, the data stream and eval batches, the step
loop with logging, periodic eval and dynamic mixing, the agreement of all ranks on non-finite losses and
SIGTERM (save at the step boundary, then `Preempted`, exit 75), checkpoints (atomic: committed by a manifest
after every rank's files and the layout's and objective's extra files are written), resume (refusing a
checkpoint of another layout) and the final export.

Exactness across a resume rests on three things: the engine state (weights, optimizer, scheduler) that
DeepSpeed restores; the stateful extras; and randomness that is a function of position, not of history:
every micro-step reseeds torch from (seed, step, micro-step, rank).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from scaling.checkpoint.manager import CheckpointManager, saved_run_config
from scaling.checkpoint.store import CheckpointRef, publish_best, resolve_resume, tag_for
from scaling.config.run import RunConfig
from scaling.distributed.env import LaunchEnv
from scaling.distributed.topology import Topology
from scaling.engine import dist as dist_setup
from scaling.engine.early_stop import EarlyStopping
from scaling.engine.layout import Layout, layout_for
from scaling.engine.metrics import MetricsSink, MfuMeter, memory_stats
from scaling.engine.objective import Objective, objective_for
from scaling.engine.run_dir import agree_on_resume, node_local_storage
from scaling.engine.state import (
    Keyed,
    RankState,
    RngState,
    position_seed,
    rng_state,
    seed_everything,
    set_rng_state,
)
from scaling.engine.step_window import NonFiniteLoss, SigtermFlag, StepWindow, all_reduce_int, loss_scale
from scaling.errors import UserError
from scaling.launch.status import EXIT_PREEMPTED, FAILED, PREEMPTED, write_report

logger = logging.getLogger(__name__)

__all__ = [
    "EXIT_PREEMPTED",
    "NonFiniteLoss",
    "Preempted",
    "TrainResult",
    "Trainer",
    "position_seed",
    "rng_state",
    "run_config_changes",
    "seed_everything",
    "set_rng_state",
    "train",
]


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved at the step boundary."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"preempted: saved step {step} to {checkpoint}; resume with --resume auto")
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    """What a finished run reports back to its caller."""

    final_step: int
    final_loss: float | None
    checkpoint: Path | None
    export_dir: Path | None
    skipped_nonfinite: int
    eval: dict[str, float] = field(default_factory=dict)


def train(run: RunConfig, env: LaunchEnv, *, objective: Objective | None = None) -> TrainResult:
    """Run (or resume) the training described by `run` in this process, as rank `env.rank`.

    The layout follows from the run's parallel degrees; `objective` defaults to the one `run.model.task`
    trains (language modelling, or DPO; distillation passes its own, see scaling.compress.distill_objective). On failure every
    rank writes its report (rank, step, error) into the run directory before anything else can fail."""
    dist_setup.init_process_group(env, timeout_s=run.parallel.init_timeout_s)
    training = Trainer(run, env, objective=objective)
    try:
        result = training.fit()
    except Preempted as stop:
        write_report(run.output, rank=env.rank, step=stop.step, kind=PREEMPTED, error=str(stop.checkpoint))
        dist_setup.teardown()
        raise
    except BaseException as err:
        error = f"{type(err).__name__}: {err}"
        write_report(run.output, rank=env.rank, step=training.current_step, kind=FAILED, error=error)
        where = f"rank {env.rank} failed at step {training.current_step}"
        logger.error("%s: %s", where, error)
        if isinstance(err, UserError):
            dist_setup.teardown()  # raised on every rank together (non-finite loss, bad checkpoint)
        else:
            dist_setup.abandon()  # a peer may be dead or hung: do not wait for it in a closing barrier
        raise
    dist_setup.teardown()
    return result


@dataclass
class LoopCounters:
    """The loop's own stateful extra: steps done, tokens this rank consumed, micro-batches skipped."""

    step: int = 0
    tokens_seen: int = 0
    skipped_nonfinite: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "skipped_nonfinite": self.skipped_nonfinite,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.skipped_nonfinite = int(state["skipped_nonfinite"])


class Provenance:
    """Where a rank state was saved (world size, data-parallel rank, fp16 loss scale): read by `scaling
    checkpoint reshape` and by people, never restored (the resume's layout check compares whole layouts)."""

    def __init__(self, world_size: int, dp_rank: int, layout: Layout) -> None:
        self.world_size = world_size
        self.dp_rank = dp_rank
        self.layout = layout

    def state_dict(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "dp_rank": self.dp_rank,
            "loss_scale": loss_scale(self.layout.engine),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: provenance describes the run that saved, not this one."""


class Trainer:
    """One rank's share of a run: builds the engine (through the layout and the objective), data and
    checkpointing, then `fit()`s. The layout runs each step and calls back into `next_batch`, `agree` and
    `handle_nonfinite` (its StepLoop)."""

    def __init__(
        self,
        run: RunConfig,
        env: LaunchEnv,
        *,
        layout: Layout | None = None,
        objective: Objective | None = None,
    ):
        self.run = run
        self.env = env
        self.rank = env.rank
        self.topology = Topology(
            world_size=env.world_size,
            tensor_parallel=run.parallel.tensor_parallel,
            pipeline_stages=run.parallel.pipeline_stages,
            sequence_parallel=run.parallel.sequence_parallel,
        )
        self.dp_rank = self.topology.data_rank(self.rank)
        self.counts_data = self.topology.counts_data(self.rank)
        self.output = run.output
        self.layout = layout or layout_for(run, env)
        self.objective: Objective = objective or objective_for(run)
        # With a run directory per node, each node's local rank 0 writes its node's copy (DeepSpeed's rule).
        writer = env.local_rank == 0 if node_local_storage(run.deepspeed) else self.rank == 0
        self.ckpt = CheckpointManager(
            self.output / "checkpoints", self.rank, run.checkpoint.keep_last, writer=writer
        )
        self.counters = LoopCounters()
        self.rank_state = RankState()
        self.resume_changes: list[str] = []
        self.current_step = 0  # the optimizer step being run (1-based), named in failure reports
        self._pending_nonfinite: torch.Tensor | None = None  # this step's earlier micro-batches (see agree)
        patience = run.log.early_stop_patience
        self.early_stop = EarlyStopping(patience) if patience else None

    @property
    def engine(self) -> Any:
        return self.layout.engine

    @property
    def skipped_nonfinite(self) -> int:
        return self.counters.skipped_nonfinite

    # -- building -------------------------------------------------------------------------------------

    def _build(self) -> None:
        from scaling.data import build_eval_batches, build_train_stream
        from scaling.engine.build import load_run_tokenizer

        run = self.run
        seed_everything(run.optim.seed)
        self.tokenizer = load_run_tokenizer(run, self.rank)
        engine, self.hf_config = self.layout.build_engine(self.objective, self.tokenizer)
        self.objective.attach(engine)
        self.stream = build_train_stream(
            run.data,
            self.tokenizer,
            task=run.model.task,
            micro_batch=run.optim.micro_batch,
            dp_rank=self.dp_rank,
            dp_size=self.topology.data_parallel,
            seed=run.optim.seed,
        )
        self.eval_batches: list[dict[str, torch.Tensor]] = []
        if run.data.eval:
            batches = build_eval_batches(
                run.data,
                self.tokenizer,
                task=run.model.task,
                micro_batch=run.optim.micro_batch,
                dp_rank=self.dp_rank,
                dp_size=self.topology.data_parallel,
                max_batches=run.log.eval_batches,
            )
            # Under ZeRO-3 every forward gathers parameters collectively: all ranks must run as many.
            count = all_reduce_int(len(batches), dist.ReduceOp.MIN, device=engine.device)
            self.eval_batches = batches[:count]
        for part in (
            self.counters,
            Provenance(self.env.world_size, self.dp_rank, self.layout),
            Keyed("data", self.stream),
            RngState(),
            self.objective,
        ):
            self.rank_state.add(part)
        if self.early_stop is not None:
            self.rank_state.add(self.early_stop)

    # -- the loop -------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        run = self.run
        self._build()
        start_step = self._maybe_resume()
        if self.ckpt.writer:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "run_config.json").write_text(run.to_json(), encoding="utf-8")
        sink = MetricsSink(
            run.log,
            self.output,
            active=self.rank == 0,
            total_steps=run.total_steps,
            start_step=start_step,
            run_config=run.to_dict(),
        )
        if start_step:
            sink.message(f"resumed from step {start_step}")
            for change in self.resume_changes:
                sink.message(f"  note: differs from the checkpoint's run: {change}")
        if run.lora.enabled:
            from scaling.models.lora import trainable_share

            sink.message(f"LoRA r={run.lora.r}: {trainable_share(self.engine.module)}")
        mfu = self._mfu_meter() if self.rank == 0 else None
        if mfu is not None:
            sink.message(mfu.describe())
        last_saved = start_step if start_step else None
        window = StepWindow()
        final_loss = None
        eval_metrics: dict[str, float] = {}
        step = start_step
        counters = self.counters
        stopped_early = False
        try:
            with SigtermFlag() as sigterm:
                while step < run.total_steps:
                    self.current_step = step + 1
                    stop_now = self.train_step(step, window, sigterm)
                    if step == start_step:
                        # Start-up (imports, compilation, the first batch) is done: from here on a rank that
                        # stops answering for dist_timeout_s is dead or hung, and the job should end.
                        dist_setup.set_collective_timeout(run.parallel.dist_timeout_s)
                    step += 1
                    counters.step = step
                    counters.tokens_seen += window.last_tokens_local
                    sink.advance()
                    if step % run.log.log_every == 0 or step == run.total_steps:
                        record = window.flush(step, self.engine)
                        record["skipped_nonfinite"] = counters.skipped_nonfinite
                        record.update(self.objective.train_metrics())
                        record.update(self.stream.metrics())
                        record.update(memory_stats())
                        if mfu is not None:
                            record.update(mfu.record(record["tokens_per_s"]))
                        final_loss = record["loss"]
                        sink.log(record)
                    if run.log.eval_every and step % run.log.eval_every == 0 and self.eval_batches:
                        eval_metrics = self.evaluate()
                        sink.log({"step": step, **eval_metrics})
                        if self.early_stop is not None:
                            stopped_early = self._watch_eval(step, eval_metrics["eval_loss"], sink)
                            last_saved = step if self.early_stop.best_step == step else last_saved
                            if stopped_early:
                                break
                    adapted = self.stream.maybe_adapt(step, self._evaluate_loss)
                    if adapted:
                        sink.log({"step": step, **{f"mix_weight/{k}": v for k, v in adapted.items()}})
                    if stop_now:
                        ref = self.save_checkpoint(step)
                        raise Preempted(step, ref.path)
                    if run.checkpoint.save_every and step % run.checkpoint.save_every == 0:
                        self.save_checkpoint(step)
                        last_saved = step
                    if step == run.checkpoint.halt_at_step:
                        break
            halted = step < run.total_steps and not stopped_early
            if (
                self.eval_batches
                and not halted
                and not (run.log.eval_every and step % run.log.eval_every == 0)
            ):
                eval_metrics = self.evaluate()
                sink.log({"step": step, **eval_metrics})
            ref = (
                self.save_checkpoint(step)
                if last_saved != step
                else CheckpointRef(self.ckpt.root, f"step-{step:08d}")
            )
            export_dir = None
            if run.checkpoint.export_final and not halted:
                best = self._best_ref()
                if best is not None and best.tag != ref.tag:
                    sink.message(f"exporting the best checkpoint (lowest eval loss): {best.tag}")
                export_dir = self._export_final(best or ref)
                sink.message(f"exported HF model to {export_dir}")
        finally:
            sink.close()
        return TrainResult(
            final_step=step,
            final_loss=final_loss,
            checkpoint=ref.path,
            export_dir=export_dir,
            skipped_nonfinite=counters.skipped_nonfinite,
            eval=eval_metrics,
        )

    def _watch_eval(self, step: int, eval_loss: float, sink: MetricsSink) -> bool:
        """Early stopping: save and pin a checkpoint at every new best eval loss (retention keeps it);
        whether to stop now (every rank reaches the same verdict from the same collective loss)."""
        assert self.early_stop is not None
        verdict = self.early_stop.update(step, eval_loss)
        if verdict.improved:
            ref = self.save_checkpoint(step)
            if self.rank == 0:
                publish_best(ref)
        if verdict.stop:
            sink.message(self.early_stop.describe())
        return verdict.stop

    def _best_ref(self) -> CheckpointRef | None:
        """The checkpoint early stopping pinned (None without early stopping or before any eval)."""
        if self.early_stop is None or self.early_stop.best_step is None:
            return None
        return CheckpointRef(self.ckpt.root, tag_for(self.early_stop.best_step))

    def train_step(self, step: int, window: StepWindow, sigterm: SigtermFlag) -> bool:
        """One optimizer step, run by the layout. Returns whether any rank got SIGTERM."""
        return self.layout.train_step(self, step, window, sigterm)

    def next_batch(self) -> dict[str, torch.Tensor]:
        return next(self.stream)

    def _mfu_meter(self) -> MfuMeter | None:
        """MFU against the datasheet and a measured matmul peak, on GPU only (None elsewhere)."""
        try:
            return MfuMeter.for_model(
                self.engine.module, self.hf_config, self.run.data.seq_len, self.env.world_size
            )
        except (AttributeError, TypeError, ZeroDivisionError):  # a model config without the usual names
            return None

    def agree(
        self, loss: torch.Tensor, sigterm_raised: bool, *, boundary: bool = True
    ) -> tuple[list[int], bool]:
        """Which ranks saw a non-finite loss, and whether any rank was asked to stop: one small all-reduce
        and one host sync per optimizer step.

        With --on-nan skip, every micro-step agrees (a skipped backward on one rank alone would deadlock the
        others' gradient reduction). A run that stops on NaN needs no such agreement mid-step: each rank
        remembers its own flag on the device and the ranks agree once, on the last micro-batch before its
        backward, so non-finite gradients never reach the weights. SIGTERM waits for that boundary too."""
        local = ~torch.isfinite(loss.detach()).all()
        if self._pending_nonfinite is not None:
            local = local | self._pending_nonfinite
        if not boundary and self.run.optim.on_nan == "stop":
            self._pending_nonfinite = local
            return [], False
        self._pending_nonfinite = None
        flags = torch.zeros(self.env.world_size + 1, dtype=torch.float32, device=loss.device)
        flags[self.rank] = local.float()
        if sigterm_raised:
            flags[-1] = 1.0
        if dist.is_initialized() and self.env.world_size > 1:
            dist.all_reduce(flags)
        values = flags.tolist()
        bad = [rank for rank, flag in enumerate(values[:-1]) if flag > 0]
        return bad, values[-1] > 0

    def handle_nonfinite(self, step: int, bad_ranks: list[int], attempts: int) -> None:
        where = f"step {step + 1}, rank(s) {', '.join(map(str, bad_ranks))}"
        if self.run.optim.on_nan == "stop":
            raise NonFiniteLoss(
                f"non-finite loss at {where}; stopping without saving (use --on-nan skip to skip such batches)"
            )
        self.counters.skipped_nonfinite += 1
        # A diverged model makes every batch non-finite; skipping forever would hide that.
        if attempts > 10 * self.run.optim.grad_accum:
            raise NonFiniteLoss(
                f"non-finite loss on {attempts} consecutive micro-batches at {where}; stopping"
            )

    # -- evaluation -----------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """The objective's eval metrics over this rank's eval batches (collective)."""
        return self.layout.evaluate(self.objective, self.eval_batches)

    def _evaluate_loss(self, batches: list[dict[str, torch.Tensor]]) -> float:
        """Collective eval loss over the given batches (the data stream's dynamic-mixing hook)."""
        return self.layout.evaluate(self.objective, batches)["eval_loss"]

    # -- checkpoints ----------------------------------------------------------------------------------

    def save_checkpoint(self, step: int) -> CheckpointRef:
        """Save and commit step `step` (collective: every rank)."""
        self._assert_finite_weights(step)
        # Ranks wait in barriers while the slowest writes its shards: allow the start-up bound for that.
        with dist_setup.collective_timeout(self.run.parallel.init_timeout_s):
            return self.ckpt.save(
                self.engine,
                step=step,
                rank_state=self.rank_state.state_dict(),
                run_config_json=self.run.to_json(),
                hf_config=self.hf_config,
                tokenizer=self.tokenizer,
                barrier=dist_setup.barrier,
                before_commit=self._before_commit,
                on_every_rank=self._on_every_rank,
            )

    def _on_every_rank(self, flag: bool) -> bool:
        return all_reduce_int(int(flag), dist.ReduceOp.MIN, device=self.engine.device) == 1

    def _before_commit(self, ref: CheckpointRef) -> None:
        self.layout.before_commit(ref)
        self.objective.before_commit(ref, self.rank)

    def _assert_finite_weights(self, step: int) -> None:
        # Never commit non-finite weights: a resume from them could never recover.
        from scaling.compat.deepspeed import local_partition

        finite = torch.tensor([1.0], device=self.engine.device)
        for param in self.engine.module.parameters():
            local = local_partition(param)  # ZeRO-3: this rank's shard (the parameter itself is empty)
            if local.numel() and not torch.isfinite(local).all():
                finite[0] = 0.0
                break
        if dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            raise NonFiniteLoss(f"weights are non-finite at step {step}; refusing to save a checkpoint")

    def _maybe_resume(self) -> int:
        """Restore the engine and every stateful extra from the checkpoint `--resume` names; the step to
        continue from (0 for a fresh start)."""
        ref = agree_on_resume(
            lambda: resolve_resume(self.run.checkpoint.resume, self.ckpt.root),
            self.ckpt.root,
            self.env,
            writer=bool(self.ckpt.writer),
        )
        if ref is None:
            return 0
        self._check_layout(ref)
        state = self.ckpt.load(self.engine, ref)
        self.resume_changes = run_config_changes(saved_run_config(ref), self.run.to_dict())
        self.rank_state.load_state_dict(state)
        return self.counters.step

    def _check_layout(self, ref: CheckpointRef) -> None:
        """Refuse, on every rank alike, a checkpoint saved for other process counts or degrees: DeepSpeed may
        load its shards anyway (same ZeRO world) while the data positions belong to other data ranks."""
        from scaling.checkpoint.reshape import Layout as SavedLayout
        from scaling.checkpoint.reshape import reshape_record, source_layout
        from scaling.errors import CheckpointError

        record = reshape_record(ref)
        saved = SavedLayout(**record["target"]) if record else source_layout(saved_run_config(ref))
        parallel = self.run.parallel
        current = SavedLayout(
            world_size=self.env.world_size,
            pipeline_stages=parallel.pipeline_stages,
            tensor_parallel=parallel.tensor_parallel,
            sequence_parallel=parallel.sequence_parallel,
        )
        if not saved.same_processes(current):
            raise CheckpointError(
                f"{ref.path} was saved for {saved.describe()}, this run is {current.describe()}; convert it "
                f"first: scaling checkpoint reshape {ref.path} --output NEW_DIR --world-size {current.world_size}"
                + (f" --pipeline-stages {current.pipeline_stages}" if current.pipeline_stages > 1 else "")
                + (
                    f" --sequence-parallel {current.sequence_parallel}"
                    if current.sequence_parallel > 1
                    else ""
                )
                + ", then --resume NEW_DIR"
            )

    def _export_final(self, ref: CheckpointRef) -> Path | None:
        from scaling.checkpoint.export import export_checkpoint

        target = self.output / "final"
        adapter = self.output / "adapter" if self.run.lora.enabled else None
        with dist_setup.collective_timeout(self.run.parallel.init_timeout_s):  # the others wait for rank 0
            if node_local_storage(self.run.deepspeed) and self.env.world_size > self.env.local_world_size:
                # rank 0's node holds only its own shards: export from a copy completed by the others
                from scaling.checkpoint.gather import discard_gathered, gather_to_rank0

                staged = gather_to_rank0(ref, self.rank)
                try:
                    source = staged.path if staged is not None else ref.path
                    dist_setup.on_rank0(
                        lambda: export_checkpoint(source, target, recorded_as=ref.path, adapter_dir=adapter),
                        rank=self.rank,
                    )
                finally:
                    discard_gathered(staged)
            else:
                dist_setup.on_rank0(
                    lambda: export_checkpoint(ref.path, target, adapter_dir=adapter), rank=self.rank
                )
        return target


# Sections whose change alters what a resumed run computes (paths, logging and resume settings do not).
_COMPARED_SECTIONS = (
    "model",
    "data",
    "optim",
    "parallel",
    "deepspeed",
    "total_steps",
    "world_size",
    "lora",
    "dpo",
)


def run_config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose value differs between the checkpoint's run and this one, as `key: old -> new`.

    A resume takes its options from the new command line; a change there (another lr, batch or config) is
    legitimate but breaks exact continuation, so the run says so instead of diverging silently."""
    changes: list[str] = []

    def walk(old: Any, new: Any, path: str) -> None:
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new)):
                walk(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        elif _normalise(old) != _normalise(new):
            changes.append(f"{path}: {old!r} -> {new!r}")

    for section in _COMPARED_SECTIONS:
        walk(saved.get(section), current.get(section), section)
    return [c for c in changes if not c.startswith("model.tokenizer:")]  # a path, resolved per run


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
