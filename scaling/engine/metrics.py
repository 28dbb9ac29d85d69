"""Where rank 0's numbers go: metrics.jsonl (always), the chosen experiment trackers (scaling.engine.trackers),
a console progress bar with eval results, and at the end OUTPUT/plots/loss.png."""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
from pathlib import Path
from typing import Any

from scaling.config.sections import LogConfig
from scaling.engine.trackers import Tracker, open_tracker, scalars_of

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class MetricsSink:
    """Rank 0 writes; other ranks hold an inert sink so call sites need no rank checks."""

    def __init__(
        self,
        cfg: LogConfig,
        output: Path,
        *,
        active: bool,
        total_steps: int,
        start_step: int,
        run_config: dict[str, Any] | None = None,
    ):
        self.active = active
        self.output = output
        self._jsonl = None
        self._trackers: list[Tracker] = []
        self._bar = None
        if not active:
            return
        output.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(output / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115 - lives with the run
        for name in cfg.trackers:
            try:
                self._trackers.append(
                    open_tracker(name, output, start_step=start_step, run_config=run_config or {})
                )
            except Exception as err:  # only rank 0 reports: failing here would leave the others waiting
                logger.warning(
                    "not reporting to %s: %s: %s (metrics.jsonl has everything)",
                    name,
                    type(err).__name__,
                    err,
                )
        if cfg.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr
            )

    def log(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(_jsonable(record)) + "\n")
        self._jsonl.flush()
        step = int(record["step"])
        scalars = scalars_of(record)
        for tracker in list(self._trackers):
            try:
                tracker.log(step, scalars)
            except Exception as err:  # a tracker's server going away must not end the run
                logger.warning(
                    "stopped reporting to %s: %s: %s", type(tracker).__name__, type(err).__name__, err
                )
                self._trackers.remove(tracker)
        if "eval_loss" in record:
            self.message(eval_line(record))
        if self._bar is not None and "loss" in record:
            extra = {"mfu": f"{record['mfu_pct']:.1f}%"} if "mfu_pct" in record else {}
            self._bar.set_postfix(
                loss=f"{record['loss']:.4f}",
                lr=f"{record.get('lr', 0):.2e}",
                tok_s=f"{record.get('tokens_per_s', 0):.0f}",
                **extra,
            )

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def message(self, text: str) -> None:
        if not self.active:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)  # above the bar, which a log handler would tear
        else:
            logger.info(text)

    def close(self) -> None:
        """Close every sink, then draw OUTPUT/plots/loss.png from metrics.jsonl (rank 0)."""
        for thing in (self._bar, *self._trackers, self._jsonl):
            if thing is not None:
                thing.close()
        was_active = self._jsonl is not None
        self._bar = self._jsonl = None
        self._trackers = []
        if was_active:
            from scaling.engine.plot import plot_run

            try:
                plot_run(self.output)
            except Exception as err:  # a missing plotting library must not fail a finished run
                logger.warning("could not draw the loss plot: %s: %s", type(err).__name__, err)


def eval_line(record: dict[str, Any]) -> str:
    """`eval @ step 40: loss 2.3456, perplexity 10.44` (accuracy for classifiers)."""
    parts = [f"loss {record['eval_loss']:.4f}"]
    for key in ("eval_perplexity", "eval_accuracy"):
        if key in record and isinstance(record[key], int | float):
            parts.append(f"{key[5:]} {record[key]:.4g}")
    return f"eval @ step {record['step']}: " + ", ".join(parts)


def read_metrics(output: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as records; where a step was logged twice (a resume repeated it) the later one wins."""
    path = Path(output) / METRICS_FILE
    if not path.is_file():
        return []
    latest: dict[tuple[int, str], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        kind = "eval" if "eval_loss" in record else "train" if "loss" in record else "other"
        latest[(int(record["step"]), kind)] = record
    return [latest[key] for key in sorted(latest)]


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = str(value)
        else:
            out[key] = value
    return out


def memory_stats() -> dict[str, float]:
    """Resident and peak host memory of this process, and accelerator memory when there is one (MiB)."""
    import torch

    stats = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        with open(f"/proc/{os.getpid()}/statm") as handle:
            stats["rss_mib"] = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        pass
    if torch.cuda.is_available():
        stats["gpu_mem_mib"] = torch.cuda.memory_allocated() / 2**20
        stats["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return stats


# -- model FLOPs utilisation (PaLM, appendix B; as nanoGPT and torchtitan count it) ------------------------

# Dense bf16/fp16 tensor-core peaks from vendor datasheets (FLOP/s, without sparsity), matched by device name.
DATASHEET_PEAK_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
}


def flops_per_token(n_params: int, layers: int, heads: int, head_dim: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights (forward + backward) plus 12*L*H*Q*T for attention."""
    return 6.0 * n_params + 12.0 * layers * heads * head_dim * seq_len


def datasheet_peak(device_name: str) -> float | None:
    """The datasheet dense bf16 peak of a device, by (sub)name; None when unknown."""
    for key, peak in DATASHEET_PEAK_BF16.items():
        if key.lower() in device_name.lower():
            return peak
    return None


def measure_matmul_peak(dtype: Any = None, size: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of a large square matmul on the current CUDA device (bf16 by default): the ceiling we can reach."""
    import torch

    dtype = dtype or torch.bfloat16
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3
    del a, b
    torch.cuda.empty_cache()
    return 2.0 * size**3 * repeats / seconds


class MfuMeter:
    """Turns logged tokens/s into MFU (% of one device's peak), against the datasheet and a measured matmul."""

    def __init__(self, flops_token: float, world_size: int, datasheet: float | None, measured: float | None):
        self.flops_token = flops_token
        self.world_size = max(1, world_size)
        self.datasheet = datasheet
        self.measured = measured

    @classmethod
    def for_model(
        cls, model: Any, hf_config: Any, seq_len: int, world_size: int, measure: bool = True
    ) -> MfuMeter | None:
        """None off GPU (MFU means nothing against a CPU here). Parameters of ZeRO-3 partitions count whole."""
        import torch

        if not torch.cuda.is_available():
            return None
        n_params = sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters())
        layers = _cfg(hf_config, "num_hidden_layers", "n_layer", "num_layers")
        heads = _cfg(hf_config, "num_attention_heads", "n_head")
        hidden = _cfg(hf_config, "hidden_size", "n_embd", "d_model")
        head_dim = getattr(hf_config, "head_dim", None) or hidden // heads
        measured = None
        if measure:
            try:
                measured = measure_matmul_peak()
            except RuntimeError:  # out of memory, or no bf16 on this device
                measured = None
        return cls(
            flops_per_token(n_params, layers, heads, head_dim, seq_len),
            world_size,
            datasheet_peak(torch.cuda.get_device_name()),
            measured,
        )

    def record(self, tokens_per_s: float) -> dict[str, float]:
        """MFU per device: `tokens_per_s` is the whole job's (all ranks)."""
        achieved = tokens_per_s * self.flops_token / self.world_size
        out = {"model_tflops_per_device": achieved / 1e12}
        if self.datasheet:
            out["mfu_pct"] = 100.0 * achieved / self.datasheet
        if self.measured:
            out["mfu_pct_of_measured_matmul"] = 100.0 * achieved / self.measured
        return out

    def describe(self) -> str:
        sheet = f"{self.datasheet / 1e12:.0f}" if self.datasheet else "unknown"
        meas = f"{self.measured / 1e12:.0f}" if self.measured else "not measured"
        return (
            f"MFU peaks per device: datasheet bf16 {sheet} TFLOP/s, measured bf16 matmul {meas} TFLOP/s; "
            f"{self.flops_token / 1e9:.2f} GFLOP per token"
        )


def _cfg(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value:
            return int(value)
    raise AttributeError(f"model config has none of {names}")
