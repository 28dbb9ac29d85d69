"""Layouts: how one rank's share of the model becomes a DeepSpeed engine, and how a step and an evaluation run
on it. A layout knows nothing of what is learnt; the objective (scaling.engine.objective) does.

`Layout` is the plain data-parallel layout (ZeRO 0-3); the pipeline (scaling.engine.pipeline), AutoTP
(scaling.engine.tensor_parallel) and Ulysses (scaling.engine.sequence_parallel) layouts replace the parts that
differ. Each layout:

- `build_engine(objective, tokenizer)`: asks the objective for the model at the point it needs it, wraps it
  (pipeline stages, Ulysses attention, AutoTP sharding through the DeepSpeed config), initialises the engine
  with our AdamW groups and LR schedule, returns the engine and the HF config a checkpoint/export names;
- `train_step(loop, step, window, sigterm)`: one optimizer step of `grad_accum` micro-batches, reseeding
  torch per micro-step from the position (exact replay after a resume), agreeing with all ranks on
  non-finite losses and SIGTERM; returns whether a rank got SIGTERM;
- `evaluate(objective, batches)`: collective, token-weighted eval through the objective's eval totals;
- `before_commit(ref)`: layout files a checkpoint must contain before it commits (AutoTP: the gathered full
  weights that export reads).

`layout_for(run, env)` picks the layout from the run's parallel degrees; the checks that refuse impossible
combinations run before launch (scaling.models.pipe, scaling.config).
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist

from scaling.engine.schedule import build_lr_scheduler
from scaling.engine.state import position_seed, reseed
from scaling.engine.step_window import SigtermFlag, StepWindow, count_targets, count_tokens

if TYPE_CHECKING:
    from scaling.checkpoint.store import CheckpointRef
    from scaling.config.run import RunConfig
    from scaling.distributed.env import LaunchEnv
    from scaling.engine.objective import EvalTotals, Objective

__all__ = ["Layout", "StepLoop", "layout_for", "to_device"]


class StepLoop(Protocol):
    """What a layout's step needs from the training loop."""

    run: RunConfig
    rank: int
    objective: Objective
    counts_data: bool
    """Whether this rank's tokens count in throughput (tensor and sequence peers share one batch)."""

    def next_batch(self) -> dict[str, torch.Tensor]: ...

    def agree(
        self, loss: torch.Tensor, sigterm_raised: bool, *, boundary: bool = True
    ) -> tuple[list[int], bool]:
        """Collective: the ranks with a non-finite loss, and whether any rank got SIGTERM. `boundary`: the
        last micro-batch of the optimizer step (where a run that stops on NaN needs its only agreement)."""

    def handle_nonfinite(self, step: int, bad_ranks: list[int], attempts: int) -> None:
        """Skip (count it) or stop, per --on-nan; raises NonFiniteLoss to stop."""


class Layout:
    """Plain data parallelism with ZeRO 0-3: every rank holds (its ZeRO share of) the whole model and reads
    its own micro-batches."""

    name = "data-parallel"

    def __init__(self, run: RunConfig, env: LaunchEnv) -> None:
        self.run = run
        self.env = env
        self.rank = env.rank
        self.engine: Any = None

    # -- building -------------------------------------------------------------------------------------

    def build_engine(self, objective: Objective, tokenizer: Any) -> tuple[Any, Any]:
        model = objective.build_model(self.run, tokenizer)
        self.engine = self.initialize_engine(model)
        return self.engine, model.config

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

    # -- a step ---------------------------------------------------------------------------------------

    def loss(self, objective: Objective, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The objective's loss of one micro-batch on this layout."""
        return objective.loss(self.engine, batch)

    def train_step(self, loop: StepLoop, step: int, window: StepWindow, sigterm: SigtermFlag) -> bool:
        """One optimizer step of grad_accum good micro-batches. Returns whether any rank got SIGTERM."""
        run = loop.run
        engine = self.engine
        engine.train()
        lr = float(engine.get_lr()[0])
        window.note_lr(lr)
        started = time.perf_counter()
        data_wait = 0.0
        micro = 0
        attempts = 0
        tokens = targets = 0
        causal = run.model.task in ("clm", "sft", "dpo")
        stop_requested = False
        while micro < run.optim.grad_accum:
            fetch_started = time.perf_counter()
            batch = loop.next_batch()
            data_wait += time.perf_counter() - fetch_started
            reseed(position_seed(run.optim.seed, step, attempts, self.rank))
            attempts += 1
            # Counted on the host copy: counting the device copy would wait for the device.
            batch_tokens = count_tokens(batch)
            batch_targets = count_targets(batch, causal=causal)
            batch = to_device(batch, engine.device)
            loss = self.loss(loop.objective, batch)
            boundary = micro == run.optim.grad_accum - 1
            bad_ranks, stop_requested = loop.agree(loss, sigterm.raised, boundary=boundary)
            if bad_ranks:
                loop.handle_nonfinite(step, bad_ranks, attempts)
                continue
            engine.backward(loss)
            engine.step()
            window.add_micro(loss.detach())
            if loop.counts_data:  # tensor and sequence peers hold the same batch: count it once
                tokens += batch_tokens
                targets += batch_targets
            micro += 1
        loop.objective.after_step(engine, lr)
        window.end_step(time.perf_counter() - started, data_wait, tokens, targets)
        return stop_requested

    # -- evaluation -----------------------------------------------------------------------------------

    def eval_totals(self, objective: Objective, batch: dict[str, torch.Tensor]) -> EvalTotals:
        return objective.eval_totals(self.engine, batch)

    @torch.no_grad()
    def evaluate(self, objective: Objective, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Collective over all ranks (each passes its own share of the eval batches)."""
        engine = self.engine
        engine.eval()
        names: list[str] | None = None
        totals: torch.Tensor | None = None
        for batch in batches:
            figures = self.eval_totals(objective, to_device(batch, engine.device))
            if totals is None:
                names = sorted(figures)
                totals = torch.zeros(2 * len(names), dtype=torch.float64, device=engine.device)
            assert names is not None
            for i, name in enumerate(names):
                value, weight = figures[name]
                totals[2 * i] += value
                totals[2 * i + 1] += weight
        engine.train()
        return objective.metrics(reduce_totals(names, totals, engine.device))

    # -- checkpoints ----------------------------------------------------------------------------------

    def before_commit(self, ref: CheckpointRef) -> None:
        """Called on every rank after all files of a save are written, before the manifest commits them."""


def to_device(batch: dict[str, torch.Tensor], device: Any) -> dict[str, torch.Tensor]:
    """The batch on the engine's device; on CUDA through pinned memory, so the copy does not block the host
    (the stream orders it before the forward that reads it)."""
    if torch.device(device).type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def reduce_totals(names: list[str] | None, totals: torch.Tensor | None, device: Any) -> EvalTotals:
    """Sum per-rank eval totals over the world. A rank without batches still joins the all-reduce (every
    rank evaluates the same number of batches, so this happens only when all have none)."""
    if names is None or totals is None:
        names, totals = ["loss"], torch.zeros(2, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(totals)
    values = totals.tolist()
    return {name: (values[2 * i], values[2 * i + 1]) for i, name in enumerate(names)}


def layout_for(run: RunConfig, env: LaunchEnv) -> Layout:
    """The layout the run's parallel degrees ask for (pipeline, AutoTP, Ulysses or plain data parallelism)."""
    if run.parallel.pipeline_stages > 1:
        from scaling.engine.pipeline import PipelineLayout

        return PipelineLayout(run, env)
    if run.parallel.tensor_parallel > 1:
        from scaling.engine.tensor_parallel import TensorParallelLayout

        return TensorParallelLayout(run, env)
    if run.parallel.sequence_parallel > 1:
        from scaling.engine.sequence_parallel import SequenceParallelLayout

        return SequenceParallelLayout(run, env)
    return Layout(run, env)
