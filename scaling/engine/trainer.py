"""The training loop: DeepSpeed engine around an HF model, fed by the data stream, saving resumable
checkpoints, logging from rank 0.

Exactness across a resume rests on three things: the engine state (weights, optimizer, scheduler) that
DeepSpeed restores; the data stream's own state (where each rank's sources stand); and randomness that is a
function of position, not of history: every micro-step reseeds torch from (seed, step, micro-step, rank).
"""

from __future__ import annotations

import math
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from scaling.checkpoint.manager import CheckpointManager, saved_run_config
from scaling.checkpoint.store import CheckpointRef, resolve_resume
from scaling.config.run import RunConfig
from scaling.distributed.env import LaunchEnv
from scaling.distributed.topology import Topology
from scaling.engine import dist as dist_setup
from scaling.engine.metrics import MetricsSink, MfuMeter, memory_stats
from scaling.engine.schedule import build_lr_scheduler
from scaling.errors import UserError
from scaling.launch.status import EXIT_PREEMPTED, FAILED, PREEMPTED, write_report

__all__ = ["EXIT_PREEMPTED", "Preempted", "TrainResult", "TrainingRun", "train"]


class NonFiniteLoss(UserError):
    """The loss became NaN/inf and the run was told to stop (`--on-nan stop`)."""


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


def position_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """A seed that depends only on where we are in the run, so dropout replays exactly after a resume."""
    return int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1)[0])


def _reseed(seed: int) -> None:
    """torch.manual_seed for the devices we train on (CPU, CUDA), without its per-call cost: on a host without
    an initialised CUDA it queues a lazy CUDA seed and formats a stack trace every call (~0.7% of a small
    step, profiled); the resulting CPU and CUDA generator states are the same."""
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.default_generator.manual_seed(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class _SigtermFlag:
    """Records SIGTERM instead of dying mid-step; the loop saves at the next step boundary."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> _SigtermFlag:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. inside a test harness thread): nothing to catch
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(
    run: RunConfig, env: LaunchEnv, *, make: Callable[[RunConfig, LaunchEnv], TrainingRun] | None = None
) -> TrainResult:
    """Run (or resume) the training described by `run` in this process, as rank `env.rank`.

    `make` builds the run object instead of `run_class_for(run)` (distillation passes its DistillRun)."""
    dist_setup.init_process_group(env, timeout_s=run.parallel.init_timeout_s)
    training = (make or run_class_for(run))(run, env)
    try:
        result = training.fit()
    except Preempted as stop:
        write_report(run.output, rank=env.rank, step=stop.step, kind=PREEMPTED, error=str(stop.checkpoint))
        dist_setup.teardown()
        raise
    except BaseException as err:
        # Name this rank and its step in the run directory and the log before anything else can fail.
        error = f"{type(err).__name__}: {err}"
        write_report(run.output, rank=env.rank, step=training.current_step, kind=FAILED, error=error)
        where = f"rank {env.rank} failed at step {training.current_step}"
        print(f"[scaling] {where}: {error}", file=sys.stderr, flush=True)
        if isinstance(err, UserError):
            dist_setup.teardown()  # raised on every rank together (non-finite loss, bad checkpoint)
        else:
            dist_setup.abandon()  # a peer may be dead or hung: do not wait for it in a closing barrier
        raise
    dist_setup.teardown()
    return result


def run_class_for(run: RunConfig) -> type[TrainingRun]:
    """The TrainingRun subclass the parallel layout needs (the pipeline and AutoTP engines differ)."""
    if run.parallel.pipeline_stages > 1:
        from scaling.engine.pipeline import PipelineRun

        return PipelineRun
    if run.parallel.tensor_parallel > 1:
        from scaling.engine.tensor_parallel import TensorParallelRun

        return TensorParallelRun
    if run.parallel.sequence_parallel > 1:
        from scaling.engine.sequence_parallel import SequenceParallelRun

        return SequenceParallelRun
    return TrainingRun


class TrainingRun:
    """One rank's share of a run: builds the engine, data and checkpointing, then `fit()`s."""

    def __init__(self, run: RunConfig, env: LaunchEnv):
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
        self.ckpt = CheckpointManager(self.output / "checkpoints", self.rank, run.checkpoint.keep_last)
        self.skipped_nonfinite = 0
        self.resume_changes: list[str] = []
        self.current_step = 0  # the optimizer step being run (1-based), named in failure reports

    # -- building (extension points: build_engine, compute_loss, train_step) ------------------------------

    def _build(self) -> None:
        from scaling.data import build_eval_batches, build_train_stream
        from scaling.engine.build import load_run_tokenizer

        run = self.run
        seed_everything(run.optim.seed)
        self.tokenizer = load_run_tokenizer(run, self.rank)
        self.engine, self.hf_config = self.build_engine()
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
            count = _all_reduce_int(len(batches), dist.ReduceOp.MIN, device=self.engine.device)
            self.eval_batches = batches[:count]

    def build_engine(self) -> tuple[Any, Any]:
        """The DeepSpeed engine around the model, and the HF config an export needs.

        Subclasses swap in other engines (the pipeline engine) or models (a distillation student)."""
        from scaling.engine.build import make_model

        model = make_model(self.run, self.tokenizer)
        return self.initialize_engine(model), model.config

    def initialize_engine(self, model: Any, *, config: dict[str, Any] | None = None, mpu: Any = None) -> Any:
        """deepspeed.initialize over `model` with our AdamW parameter groups and the run's JSON (or `config`).

        Without a `scheduler` section in the JSON the schedule is ours (HF semantics); DeepSpeed still steps it
        at each boundary and saves it in checkpoints."""
        import deepspeed

        from scaling.engine.build import param_groups

        run = self.run
        config = run.deepspeed if config is None else config
        own_schedule = None
        if "scheduler" not in config:
            own_schedule = partial(build_lr_scheduler, optim=run.optim, total_steps=run.total_steps)
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=param_groups(model, run.optim.weight_decay),
            config=config,
            lr_scheduler=own_schedule,
            mpu=mpu,
            dist_init_required=False,
        )
        return engine

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training objective of one micro-batch (distillation overrides it)."""
        return self.engine(**batch).loss

    # -- the loop -------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        run = self.run
        self._build()
        start_step, tokens_seen = self._maybe_resume()
        if self.rank == 0:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "run_config.json").write_text(run.to_json(), encoding="utf-8")
        sink = MetricsSink(
            run.log, self.output, active=self.rank == 0, total_steps=run.total_steps, start_step=start_step
        )
        if start_step:
            sink.message(f"resumed from step {start_step}")
            for change in self.resume_changes:
                sink.message(f"  note: differs from the checkpoint's run: {change}")
        mfu = self._mfu_meter() if self.rank == 0 else None
        if mfu is not None:
            sink.message(mfu.describe())
        last_saved = start_step if start_step else None
        window = _Window()
        final_loss = None
        eval_metrics: dict[str, float] = {}
        step = start_step
        try:
            with _SigtermFlag() as sigterm:
                while step < run.total_steps:
                    self.current_step = step + 1
                    stop_now = self.train_step(step, window, sigterm)
                    if step == start_step:
                        # Start-up (imports, compilation, the first batch) is done: from here on a rank that
                        # stops answering for dist_timeout_s is dead or hung, and the job should end.
                        dist_setup.set_collective_timeout(run.parallel.dist_timeout_s)
                    step += 1
                    tokens_seen += window.last_tokens_local
                    sink.advance()
                    if step % run.log.log_every == 0 or step == run.total_steps:
                        record = window.flush(step, self.engine)
                        record["skipped_nonfinite"] = self.skipped_nonfinite
                        record.update(self.stream.metrics())
                        record.update(memory_stats())
                        if mfu is not None:
                            record.update(mfu.record(record["tokens_per_s"]))
                        final_loss = record["loss"]
                        sink.log(record)
                    if run.log.eval_every and step % run.log.eval_every == 0 and self.eval_batches:
                        eval_metrics = self.evaluate()
                        sink.log({"step": step, **eval_metrics})
                    adapted = self.stream.maybe_adapt(step, self._evaluate_loss)
                    if adapted:
                        sink.log({"step": step, **{f"mix_weight/{k}": v for k, v in adapted.items()}})
                    if stop_now:
                        ref = self._save(step, tokens_seen)
                        raise Preempted(step, ref.path)
                    if run.checkpoint.save_every and step % run.checkpoint.save_every == 0:
                        self._save(step, tokens_seen)
                        last_saved = step
                    if step == run.checkpoint.halt_at_step:
                        break
            halted = step < run.total_steps
            if (
                self.eval_batches
                and not halted
                and not (run.log.eval_every and step % run.log.eval_every == 0)
            ):
                eval_metrics = self.evaluate()
                sink.log({"step": step, **eval_metrics})
            ref = (
                self._save(step, tokens_seen)
                if last_saved != step
                else CheckpointRef(self.ckpt.root, f"step-{step:08d}")
            )
            export_dir = None
            if run.checkpoint.export_final and not halted:
                export_dir = self._export_final(ref)
                sink.message(f"exported HF model to {export_dir}")
        finally:
            sink.close()
        return TrainResult(
            final_step=step,
            final_loss=final_loss,
            checkpoint=ref.path,
            export_dir=export_dir,
            skipped_nonfinite=self.skipped_nonfinite,
            eval=eval_metrics,
        )

    def train_step(self, step: int, window: _Window, sigterm: _SigtermFlag) -> bool:
        """One optimizer step of grad_accum good micro-batches. Returns whether any rank got SIGTERM.

        The pipeline engine overrides this: it runs all micro-batches of a step itself (train_batch)."""
        run = self.run
        engine = self.engine
        engine.train()
        window.note_lr(float(engine.get_lr()[0]))
        started = time.perf_counter()
        data_wait = 0.0
        micro = 0
        attempts = 0
        tokens = 0
        while micro < run.optim.grad_accum:
            fetch_started = time.perf_counter()
            batch = next(self.stream)
            data_wait += time.perf_counter() - fetch_started
            _reseed(position_seed(run.optim.seed, step, attempts, self.rank))
            attempts += 1
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            loss = self.compute_loss(batch)
            bad_ranks, stop_requested = self._check(loss, sigterm.raised)
            if bad_ranks:
                self._handle_nonfinite(step, bad_ranks, attempts)
                continue
            engine.backward(loss)
            engine.step()
            window.add_micro(loss.detach())
            if self.counts_data:  # tensor and sequence peers hold the same batch: count it once
                tokens += _count_tokens(batch)
            micro += 1
        window.end_step(time.perf_counter() - started, data_wait, tokens)
        return stop_requested

    def _mfu_meter(self) -> MfuMeter | None:
        """MFU against the datasheet and a measured matmul peak, on GPU only (None elsewhere)."""
        try:
            return MfuMeter.for_model(
                self.engine.module, self.hf_config, self.run.data.seq_len, self.env.world_size
            )
        except (AttributeError, TypeError, ZeroDivisionError):  # a model config without the usual names
            return None

    def _check(self, loss: torch.Tensor, sigterm_raised: bool) -> tuple[list[int], bool]:
        """One small all-reduce per micro-step: which ranks saw a non-finite loss, and whether any rank
        was asked to stop. Every rank must agree, or a skipped backward would deadlock the others.

        The flags live on the loss's device (NCCL reduces only device tensors) and are read back once:
        one host sync per micro-step, not one for the finiteness test and another for the result."""
        flags = torch.zeros(self.env.world_size + 1, dtype=torch.float32, device=loss.device)
        flags[self.rank] = (~torch.isfinite(loss.detach()).all()).float()
        if sigterm_raised:
            flags[-1] = 1.0
        if dist.is_initialized() and self.env.world_size > 1:
            dist.all_reduce(flags)
        values = flags.tolist()
        bad = [rank for rank, flag in enumerate(values[:-1]) if flag > 0]
        return bad, values[-1] > 0

    def _handle_nonfinite(self, step: int, bad_ranks: list[int], attempts: int) -> None:
        where = f"step {step + 1}, rank(s) {', '.join(map(str, bad_ranks))}"
        if self.run.optim.on_nan == "stop":
            raise NonFiniteLoss(
                f"non-finite loss at {where}; stopping without saving (use --on-nan skip to skip such batches)"
            )
        self.skipped_nonfinite += 1
        # A diverged model makes every batch non-finite; skipping forever would hide that.
        if attempts > 10 * self.run.optim.grad_accum:
            raise NonFiniteLoss(
                f"non-finite loss on {attempts} consecutive micro-batches at {where}; stopping"
            )

    # -- evaluation -----------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        task = self.run.model.task
        engine = self.engine
        engine.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=engine.device)  # loss * count, count, correct
        for batch in self.eval_batches:
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            out = engine(**batch)
            labels = batch["labels"]
            if task == "seq-cls":
                count = labels.numel()
                totals[2] += (out.logits.argmax(-1) == labels).sum().item()
            elif task == "clm":
                count = int((labels[:, 1:] != -100).sum())
            else:
                count = int((labels != -100).sum())
            totals[0] += float(out.loss) * count
            totals[1] += count
        if dist.is_initialized():
            dist.all_reduce(totals)
        engine.train()
        loss = (totals[0] / totals[1].clamp(min=1)).item()
        metrics = {"eval_loss": loss}
        if task == "seq-cls":
            metrics["eval_accuracy"] = (totals[2] / totals[1].clamp(min=1)).item()
        else:
            metrics["eval_perplexity"] = math.exp(min(loss, 50.0))
        return metrics

    def _evaluate_loss(self, batches: list[dict[str, torch.Tensor]]) -> float:
        """Collective eval loss over the given batches (the data stream's dynamic-mixing hook)."""
        saved, self.eval_batches = self.eval_batches, batches
        try:
            return self.evaluate()["eval_loss"]
        finally:
            self.eval_batches = saved

    # -- checkpoints ----------------------------------------------------------------------------------

    def _rank_state(self, step: int, tokens_seen: int) -> dict[str, Any]:
        return {
            "step": step,
            "tokens_seen": tokens_seen,
            "skipped_nonfinite": self.skipped_nonfinite,
            "data": self.stream.state_dict(),
            "rng": rng_state(),
            "world_size": self.env.world_size,
            "dp_rank": self.dp_rank,
            "loss_scale": _loss_scale(self.engine),
        }

    def _save(self, step: int, tokens_seen: int) -> CheckpointRef:
        self._assert_finite_weights(step)
        # Ranks wait in barriers while the slowest writes its shards: allow the start-up bound for that.
        with dist_setup.collective_timeout(self.run.parallel.init_timeout_s):
            return self.ckpt.save(
                self.engine,
                step=step,
                rank_state=self._rank_state(step, tokens_seen),
                run_config_json=self.run.to_json(),
                hf_config=self.hf_config,
                tokenizer=self.tokenizer,
                barrier=dist_setup.barrier,
                before_commit=self.before_commit,
            )

    def before_commit(self, ref: CheckpointRef) -> None:
        """Called on every rank after all files of a save are written, before the manifest commits them:
        the place for extra files a layout needs (tensor-parallel shards gathered for export)."""

    def _assert_finite_weights(self, step: int) -> None:
        # Never commit non-finite weights: a resume from them could never recover.
        finite = torch.tensor([1.0], device=self.engine.device)
        for param in self.engine.module.parameters():
            if param.numel() and not torch.isfinite(param.detach()).all():
                finite[0] = 0.0
                break
        if dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            raise NonFiniteLoss(f"weights are non-finite at step {step}; refusing to save a checkpoint")

    def _maybe_resume(self) -> tuple[int, int]:
        ref = resolve_resume(self.run.checkpoint.resume, self.ckpt.root)
        if ref is None:
            return 0, 0
        self._check_layout(ref)
        state = self.ckpt.load(self.engine, ref)
        self.resume_changes = run_config_changes(saved_run_config(ref), self.run.to_dict())
        self.stream.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        self.skipped_nonfinite = state["skipped_nonfinite"]
        return int(state["step"]), int(state["tokens_seen"])

    def _check_layout(self, ref: CheckpointRef) -> None:
        """Refuse, on every rank alike, a checkpoint saved for other process counts or degrees: DeepSpeed may
        load its shards anyway (same ZeRO world) while the data positions belong to other data ranks."""
        from scaling.checkpoint.reshape import Layout, reshape_record, source_layout
        from scaling.errors import CheckpointError

        record = reshape_record(ref)
        saved = Layout(**record["target"]) if record else source_layout(saved_run_config(ref))
        parallel = self.run.parallel
        current = Layout(
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
        with dist_setup.collective_timeout(self.run.parallel.init_timeout_s):  # the others wait for rank 0
            dist_setup.on_rank0(lambda: export_checkpoint(ref.path, target), rank=self.rank)
        return target


# Sections whose change alters what a resumed run computes (paths, logging and resume settings do not).
_COMPARED_SECTIONS = ("model", "data", "optim", "parallel", "deepspeed", "total_steps", "world_size")


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


def _count_tokens(batch: dict[str, torch.Tensor]) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def _all_reduce_int(value: int, op: Any, device: Any = "cpu") -> int:
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return int(tensor.item())


def _loss_scale(engine: Any) -> float | None:
    optimizer = getattr(engine, "optimizer", None)
    scale = getattr(optimizer, "cur_scale", None) or getattr(optimizer, "loss_scale", None)
    try:
        return float(scale) if scale is not None else None
    except (TypeError, ValueError):
        return None


class _Window:
    """Accumulates per-step figures between log records without forcing a host sync every step."""

    def __init__(self) -> None:
        self._losses: list[torch.Tensor] = []
        self._tokens = 0
        self._time = 0.0
        self._data_wait = 0.0
        self._steps = 0
        self._lr = float("nan")
        self.last_tokens_local = 0

    def note_lr(self, lr: float) -> None:
        self._lr = lr

    def add_micro(self, loss: torch.Tensor) -> None:
        self._losses.append(loss.float())

    def end_step(self, seconds: float, data_wait: float, tokens: int) -> None:
        self._time += seconds
        self._data_wait += data_wait
        self._tokens += tokens
        self._steps += 1
        self.last_tokens_local = tokens

    def flush(self, step: int, engine: Any) -> dict[str, Any]:
        local = torch.stack(self._losses).mean() if self._losses else torch.tensor(float("nan"))
        totals = torch.tensor([float(local), float(self._tokens)], dtype=torch.float64, device=local.device)
        world = dist.get_world_size() if dist.is_initialized() else 1
        if dist.is_initialized():
            dist.all_reduce(totals)
        loss = float(totals[0] / world)
        tokens = float(totals[1])
        seconds = max(self._time, 1e-9)
        grad_norm = engine.get_global_grad_norm()
        record = {
            "step": step,
            "loss": loss,
            "loss_hex": loss.hex(),
            "lr": self._lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens_per_s": tokens / seconds,
            "samples_per_s": engine.train_batch_size() * self._steps / seconds,
            "step_time_s": seconds / max(self._steps, 1),
            "data_wait_pct": 100.0 * self._data_wait / seconds,
        }
        self.__init__()
        return record
