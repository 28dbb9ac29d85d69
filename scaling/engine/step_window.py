"""Small pieces every layout's step shares: the SIGTERM flag, the window of per-step figures between log
records, token counting and the engine's loss scale.

They were private helpers of the training loop; layouts (the pipeline's own step) and objectives (the
distillation projection's unscaling) need them too, so they live here under public names.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import torch
import torch.distributed as dist

from scaling.errors import UserError

__all__ = [
    "NonFiniteLoss",
    "SigtermFlag",
    "StepWindow",
    "all_reduce_int",
    "count_targets",
    "count_tokens",
    "loss_scale",
]


class NonFiniteLoss(UserError):
    """The loss (or the weights) became NaN/inf and the run stops (`--on-nan stop`, a pipelined step, or
    too many skipped micro-batches in a row)."""


class SigtermFlag:
    """Records SIGTERM, and SIGINT likewise, instead of dying mid-step; the loop saves at the next step
    boundary. A later SIGINT stops at once (KeyboardInterrupt): the user's second Ctrl-C, or `scaling
    launch` passing on its second SIGINT.

    A terminal's Ctrl-C reaches every process of the group while the launchers (launch.py, `scaling launch`)
    pass their own copy on as SIGTERM: a SIGINT within `SAME_REQUEST_S` of the first signal is that same
    request, not a second one.

    A context manager: the previous handlers come back on exit. Outside the main thread (a test harness
    thread) no handler can be installed and `raised` simply stays False."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    SAME_REQUEST_S = 1.0

    def __init__(self) -> None:
        self.raised = False
        self._first: float | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SigtermFlag:
        try:
            for signum in self.SIGNALS:
                if signal.getsignal(signum) is signal.SIG_IGN:
                    continue  # started to ignore it (`nohup`, a shell's background job): keep ignoring it
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: nothing to catch
            self._previous = {}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if signum == signal.SIGINT and self._first is not None and now - self._first > self.SAME_REQUEST_S:
            raise KeyboardInterrupt
        if self._first is None:
            self._first = now
        self.raised = True

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous = {}


def count_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real (unpadded) tokens of a micro-batch: the attention mask's sum, or every id without a mask."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def count_targets(batch: dict[str, torch.Tensor], *, causal: bool) -> int:
    """Token targets of a micro-batch: labels other than -100 (causal: after the first position, which
    nothing predicts); 0 for per-sequence labels (seq-cls), which log no target count."""
    labels = batch.get("labels")
    if labels is None or labels.dim() != 2:
        return 0
    return int(((labels[:, 1:] if causal else labels) != -100).sum())


def all_reduce_int(value: int, op: Any, device: Any = "cpu") -> int:
    """`value` reduced with `op` over the world (itself without a process group)."""
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return int(tensor.item())


def loss_scale(engine: Any) -> float | None:
    """The fp16 loss scale of the engine's optimizer (None when it keeps none: fp32, bf16)."""
    optimizer = getattr(engine, "optimizer", None)
    scale = getattr(optimizer, "cur_scale", None) or getattr(optimizer, "loss_scale", None)
    try:
        return float(scale) if scale is not None else None
    except (TypeError, ValueError):
        return None


class StepWindow:
    """Accumulates per-step figures between log records without forcing a host sync every step.

    Layouts call `note_lr` and `add_micro` during a step and `end_step` after it; the loop calls `flush` at a
    log boundary, which all-reduces (collective: every rank calls it at the same steps) and starts over."""

    def __init__(self) -> None:
        self._reset()
        self.last_tokens_local = 0

    def _reset(self) -> None:
        self._losses: list[torch.Tensor] = []
        self._tokens = 0
        self._targets = 0
        self._time = 0.0
        self._data_wait = 0.0
        self._steps = 0
        self._lr = float("nan")
        self.last_tokens_local = 0

    def note_lr(self, lr: float) -> None:
        self._lr = lr

    def add_micro(self, loss: torch.Tensor) -> None:
        self._losses.append(loss.float())

    def end_step(self, seconds: float, data_wait: float, tokens: int, targets: int = 0) -> None:
        self._targets += targets
        self._time += seconds
        self._data_wait += data_wait
        self._tokens += tokens
        self._steps += 1
        self.last_tokens_local = tokens

    def flush(self, step: int, engine: Any) -> dict[str, Any]:
        local = torch.stack(self._losses).mean() if self._losses else torch.tensor(float("nan"))
        totals = torch.tensor(
            [float(local), float(self._tokens), float(self._targets)],
            dtype=torch.float64,
            device=local.device,
        )
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
        if totals[2] > 0:  # loss targets per optimizer step, all ranks (sft: the assistant tokens)
            record["target_tokens"] = float(totals[2]) / max(self._steps, 1)
        self._reset()
        return record
