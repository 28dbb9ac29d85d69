"""Say where every value of a resolved DeepSpeed config came from, and what the config does in plain words."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from scaling.config.deepspeed import ResolvedDeepSpeed
from scaling.config.deepspeed_models import model_fields_spec
from scaling.config.estimate import MemoryEstimate, fmt_bytes
from scaling.config.keys import canonical_path
from scaling.config.schema import offload_device, zero_stage

DEEPSPEED_DEFAULT = "DeepSpeed default"

# Keys a config may leave out whose DeepSpeed default is worth showing because it changes memory or speed,
# keyed by the ZeRO stages they matter for. The values are DeepSpeed's own model defaults (see `_default`).
_DEFAULTS: list[tuple[str, tuple[int, ...]]] = [
    ("zero_optimization.stage", (0,)),
    ("zero_optimization.contiguous_gradients", (1, 2, 3)),
    ("zero_optimization.reduce_scatter", (1, 2)),
    ("zero_optimization.reduce_bucket_size", (1, 2, 3)),
    ("zero_optimization.allgather_bucket_size", (1, 2)),
    ("zero_optimization.overlap_comm", (1, 2, 3)),
    ("zero_optimization.stage3_prefetch_bucket_size", (3,)),
    ("zero_optimization.stage3_param_persistence_threshold", (3,)),
    ("zero_optimization.stage3_max_live_parameters", (3,)),
    ("zero_optimization.sub_group_size", (3,)),
]
_FP16_DEFAULTS = [
    "fp16.loss_scale",
    "fp16.initial_scale_power",
    "fp16.loss_scale_window",
    "fp16.hysteresis",
    "fp16.min_loss_scale",
]
# Defaults DeepSpeed computes at run time (None in the model).
_DYNAMIC = {"zero_optimization.overlap_comm": "true for stage 3, else false"}


def _default(path: str) -> Any:
    """DeepSpeed's default for a key of one of its modelled sections."""
    if path in _DYNAMIC:
        return _DYNAMIC[path]
    section, field_name = canonical_path(path).split(".", 1)
    return model_fields_spec()[section][field_name].get("default")


PARTITIONED = {
    0: "nothing is partitioned: every data-parallel rank holds all parameters, gradients and optimizer states",
    1: "optimizer states (fp32 master weights, Adam moments) are partitioned across data-parallel ranks",
    2: "optimizer states and gradients are partitioned across data-parallel ranks",
    3: "optimizer states, gradients and parameters are partitioned; parameters are gathered layer by layer",
}


@dataclass(frozen=True)
class Row:
    """One leaf of the final config."""

    path: str
    """Dotted key path."""
    value: Any
    """Final value (for a DeepSpeed default, the value DeepSpeed will use)."""
    source: str
    """Where it came from: preset/file, --set, an option filling "auto", derived, or DeepSpeed default."""


def rows(resolved: ResolvedDeepSpeed) -> list[Row]:
    out = [
        Row(path, value, resolved.sources.get(path, resolved.origin))
        for path, value in _leaves(resolved.config)
    ]
    present = {canonical_path(r.path) for r in out}  # an alias and its field name are one key
    stage = zero_stage(resolved.config)
    for path, stages in _DEFAULTS:
        if stage in stages and canonical_path(path) not in present:
            out.append(Row(path, _default(path), DEEPSPEED_DEFAULT))
    if resolved.config.get("fp16", {}).get("enabled") is True:
        out.extend(Row(p, _default(p), DEEPSPEED_DEFAULT) for p in _FP16_DEFAULTS if p not in present)
    return out


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        out = []
        for key, value in node.items():
            out.extend(_leaves(value, f"{prefix}.{key}" if prefix else key))
        return out
    return [(prefix, node)]


def summary(resolved: ResolvedDeepSpeed, memory: MemoryEstimate | None = None) -> list[str]:
    """Plain-words lines: ZeRO stage, offload, precision, batch, optimizer, memory."""
    cfg, run = resolved.config, resolved.run
    stage = zero_stage(cfg)
    lines = [f"ZeRO stage {stage}: {PARTITIONED.get(stage, '?')}."]
    opt_dev, par_dev = offload_device(cfg, "optimizer"), offload_device(cfg, "param")
    if opt_dev == "none" and par_dev == "none":
        lines.append("Offload: none; everything stays in accelerator memory.")
    else:
        parts = []
        if opt_dev != "none":
            parts.append(f"optimizer states and the fp32 step to {opt_dev.upper()}")
        if par_dev != "none":
            parts.append(f"parameters to {par_dev.upper()}")
        lines.append("Offload: " + "; ".join(parts) + " (less accelerator memory, slower steps).")
    fp16 = cfg.get("fp16", {})
    if cfg.get("bf16", {}).get("enabled") is True:
        lines.append(
            "Precision: bf16 weights and activations with fp32 master weights; no loss scaling needed."
        )
    elif fp16.get("enabled") is True:
        scale = fp16.get("loss_scale", 0)
        if scale:
            lines.append(f"Precision: fp16 with a static loss scale of {scale:g}.")
        else:
            lines.append(
                f"Precision: fp16 with dynamic loss scaling (starts at 2^{fp16.get('initial_scale_power', 16)}, "
                f"halves on overflow after {fp16.get('hysteresis', 2)} overflows, doubles after "
                f"{fp16.get('loss_scale_window', 1000)} clean steps, floor {fp16.get('min_loss_scale', 1)})."
            )
    else:
        lines.append("Precision: fp32 throughout.")
    micro, accum = cfg.get("train_micro_batch_size_per_gpu"), cfg.get("gradient_accumulation_steps")
    lines.append(
        f"Effective global batch = micro {micro} x accum {accum} x dp {run.data_parallel} = "
        f"{cfg.get('train_batch_size')} samples per optimizer step (world {run.world_size}, "
        f"tp {run.tensor_parallel}, pp {run.pipeline_stages}, sp {run.sequence_parallel})."
    )
    opt = cfg.get("optimizer", {})
    params = opt.get("params", {})
    sched = cfg.get("scheduler", {})
    schedule = (
        f"DeepSpeed's {sched.get('type')}"
        if sched
        else f"the trainer's own {run.lr_schedule} schedule with {run.warmup_steps} warmup steps"
    )
    lines.append(
        f"Optimizer: {opt.get('type')} lr {params.get('lr')} (weight decay {params.get('weight_decay')}), "
        f"{schedule}, gradient clipping {cfg.get('gradient_clipping')}."
    )
    if memory is not None:
        lines.append(
            f"Memory per GPU: {fmt_bytes(memory.gpu_total)} (params {fmt_bytes(memory.gpu_params)}, grads "
            f"{fmt_bytes(memory.gpu_grads)}, optimizer {fmt_bytes(memory.gpu_optimizer)}, activations "
            f"{fmt_bytes(memory.gpu_activations)}, buffers {fmt_bytes(memory.gpu_buffers)}); "
            f"CPU per node {fmt_bytes(memory.cpu_per_node)}"
            + (f"; NVMe per rank {fmt_bytes(memory.nvme_per_rank)}" if memory.nvme_per_rank else "")
            + "."
        )
    else:
        lines.append("Memory: give --model to estimate it (see `scaling estimate`).")
    for note in resolved.notes:
        lines.append(f"Note: {note.render()}")
    return lines


def render(resolved: ResolvedDeepSpeed, memory: MemoryEstimate | None = None) -> str:
    table = rows(resolved)
    width = max(len(r.path) for r in table)
    vwidth = min(28, max(len(json.dumps(r.value)) for r in table))
    body = [f"{'key':<{width}}  {'value':<{vwidth}}  source"]
    body += [f"{r.path:<{width}}  {json.dumps(r.value):<{vwidth}}  {r.source}" for r in table]
    return "\n".join([*body, "", *summary(resolved, memory)])
