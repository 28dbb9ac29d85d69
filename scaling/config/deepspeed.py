"""Resolve a DeepSpeed JSON config for one run: load (preset or file), apply `--set` overrides, fill
`"auto"` values from the run options, and check that explicit values agree with explicit options.

Every leaf of the result carries its source, so `scaling config explain` can say where each value came from.
All problems are collected and raised together as one `ConfigError`.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from scaling.config.autos import fill_model_autos
from scaling.config.keys import is_comment
from scaling.config.loading import DEFAULT_PRESET, PRESET_DIR, list_presets, load_config, load_json, locate
from scaling.config.overrides import apply_overrides, leaf_paths, parse_override
from scaling.config.schema import Heads, check_cross, check_schema
from scaling.config.sections import (
    ASSUMED_GPUS_PER_NODE,
    LR_SCHEDULES,
    PRECISIONS,
    OptimConfig,
    ParallelConfig,
)
from scaling.distributed.topology import Topology
from scaling.errors import ConfigError, Problem

__all__ = [  # their old home
    "DEFAULT_PRESET",
    "PRESET_DIR",
    "apply_overrides",
    "list_presets",
    "load_json",
    "locate",
    "parse_override",
]
AUTO = "auto"
# Run values no command has an option for: sources must not cite an option that does not exist.
OPTIONLESS = frozenset({"--eps"})


@dataclass(kw_only=True, frozen=True)
class RunValues:
    """The run options that DeepSpeed JSON values must agree with (or are filled from, where `"auto"`).

    Built from the sections by `scaling.config.run.run_values`; its defaults are theirs.
    """

    micro_batch: int = OptimConfig.micro_batch
    """Samples per rank per forward pass."""
    grad_accum: int = OptimConfig.grad_accum
    """Micro-batches per optimizer step."""
    lr: float = OptimConfig.lr
    """Peak learning rate."""
    weight_decay: float = OptimConfig.weight_decay
    """AdamW weight decay."""
    betas: tuple[float, float] = OptimConfig.betas
    """Adam betas."""
    eps: float = OptimConfig.eps
    """Adam epsilon."""
    warmup_steps: int = OptimConfig.warmup_steps
    """Linear warmup steps."""
    total_steps: int = 1000
    """Optimizer steps of the whole run (for decay schedules)."""
    lr_schedule: str = OptimConfig.lr_schedule
    """linear, cosine or constant."""
    min_lr_ratio: float = OptimConfig.min_lr_ratio
    """Cosine floor as a fraction of lr."""
    clip_grad: float = OptimConfig.clip_grad
    """Gradient-norm clip (0: off)."""
    precision: str = OptimConfig.precision
    """fp32, bf16 or fp16."""
    world_size: int = 1
    """Processes in the job."""
    tensor_parallel: int = ParallelConfig.tensor_parallel
    """AutoTP degree."""
    pipeline_stages: int = ParallelConfig.pipeline_stages
    """Pipeline degree."""
    sequence_parallel: int = ParallelConfig.sequence_parallel
    """Ulysses sequence-parallel degree."""
    hidden_size: int | None = None
    """Model width, for the bucket sizes HF fills for `"auto"` ZeRO knobs."""
    gpus_per_node: int | None = ParallelConfig.gpus_per_node
    """Ranks per node, when known (ZeRO++ hpZ keeps a secondary parameter copy within each node)."""
    num_heads: int | None = None
    """Attention heads of the model, when known: the tensor- and sequence-parallel degrees must divide them."""
    kv_heads: int | None = None
    """Key/value heads of the model, when known (grouped-query attention)."""
    cpu_only: bool | None = True
    """No CUDA device: use torch's AdamW instead of JIT-built fused/CPU Adam ops. None: ask this machine
    (scaling.config.device), only once the config is otherwise valid."""
    explicit: frozenset[str] = frozenset()
    """Names of the fields above that the user set on the command line (others yield to the JSON)."""

    @property
    def topology(self) -> Topology:
        """The layout of these degrees, unchecked (the resolver reports what is wrong with it)."""
        return Topology.unchecked(self)

    @property
    def data_parallel(self) -> int:
        return self.topology.data_parallel


@dataclass
class ResolvedDeepSpeed:
    """The final JSON every rank gets, where each value came from, and the run values after adoption."""

    config: dict[str, Any]
    sources: dict[str, str]
    run: RunValues
    origin: str
    """The preset name or file path the config started from."""
    notes: list[Problem] = field(default_factory=list)
    """Advice that does not block the run: deprecated keys DeepSpeed 0.19.8 still accepts."""


@dataclass
class _Resolver:
    config: dict[str, Any]
    sources: dict[str, str]
    run: RunValues
    problems: list[Problem] = field(default_factory=list)
    adopted: dict[str, Any] = field(default_factory=dict)

    def get(self, path: str) -> Any:
        node: Any = self.config
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def put(self, path: str, value: Any, source: str) -> None:
        parts = path.split(".")
        node = self.config
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                return  # a section of the wrong type: the schema check has reported it already
            node = child
        node[parts[-1]] = value
        self.sources[path] = source

    def bind(self, path: str, run_field: str, run_value: Any, *, option: str) -> None:
        """Tie a JSON key to a run option: fill it when `"auto"`/absent, adopt it when the option was not
        given, or report a mismatch when both were given and differ."""
        current = self.get(path)
        explicit = run_field in self.run.explicit
        label = f"{'option' if explicit else 'default of'} {option}"
        if option in OPTIONLESS:
            label = (
                f"scaling's default {run_field} (no command-line option; write it in the JSON to change it)"
            )
        if current is None or current == AUTO:
            self.put(path, run_value, f"{label} (filled 'auto')" if current == AUTO else label)
            return
        if _same(current, run_value):
            return
        if explicit:
            self.problems.append(
                Problem(
                    path,
                    f"contradicts {option} {_fmt(run_value)}",
                    current,
                    fix=f'set it to "auto" or drop {option}',
                )
            )
        else:
            self.adopted[run_field] = current


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _fmt(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


# -- resolution ----------------------------------------------------------------------------------------------


def resolve_deepspeed(
    spec: str | dict[str, Any] | None, overrides: Iterable[str], run: RunValues
) -> ResolvedDeepSpeed:
    """Load, override, fill and check. Raises ConfigError listing every problem found."""
    load_notes: list[Problem] = []
    if isinstance(spec, dict):
        raw, origin = copy.deepcopy(spec), "inline"
    else:
        path, origin = locate(spec)
        loaded = load_config(path)
        raw, load_notes = loaded.data, loaded.notes
    sources = {leaf: origin for leaf in leaf_paths(raw, "")}
    sources = {k.lstrip("."): v for k, v in sources.items()}
    apply_overrides(raw, overrides, sources)

    # The strict schema runs first, on what the user wrote; the resolver then skips what it has flagged, so one
    # defect is reported once, and every defect in the same run.
    schema_problems, notes = check_schema(raw)
    notes = [*load_notes, *notes]
    _drop_comments(raw, sources)
    if isinstance(raw.get("bfloat16"), dict) and "bf16" not in raw:
        # DeepSpeed reads the old section name only when bf16 is absent; one name keeps precision binding simple.
        raw["bf16"] = raw.pop("bfloat16")
        for key in [k for k in sources if k.startswith("bfloat16.")]:
            sources["bf16" + key[len("bfloat16") :]] = sources.pop(key)
    flagged = {p.path for p in schema_problems}
    problems = [*schema_problems, *validate_run_values(run)]
    r = _Resolver(raw, sources, run)
    _bind_parallel(r)
    _bind_batch(r)
    _bind_precision(r)
    r.bind("gradient_clipping", "clip_grad", run.clip_grad, option="--clip-grad")
    _bind_optimizer(r)
    _bind_scheduler(r)
    _fill_zero_autos(r)
    fill_model_autos(r.config, r.sources)
    if r.get("aio.use_gds") is True and _cpu_only(r):
        r.problems.append(
            Problem("aio.use_gds", "GPUDirect Storage needs a CUDA device", True, fix="set it to false")
        )
    r.config.setdefault("steps_per_print", 10**9)  # our own logger reports; DeepSpeed's would duplicate it
    r.sources.setdefault("steps_per_print", "derived (scaling logs metrics itself)")
    r.config.setdefault("wall_clock_breakdown", False)
    r.sources.setdefault("wall_clock_breakdown", "derived")

    _fix_zero_warmup(r)
    problems.extend(p for p in r.problems if p.path not in flagged)
    flagged |= {p.path for p in problems}
    final_run = replace(run, **r.adopted) if r.adopted else run
    heads = Heads(num_heads=final_run.num_heads, kv_heads=final_run.kv_heads)
    problems.extend(check_cross(r.config, final_run.topology, heads, skip=flagged))
    problems.extend(
        Problem(path, "still 'auto' after resolution", AUTO, fix="give a value")
        for path in _autos_left(r.config)
        if path not in flagged and not (flagged & _DERIVED_FROM.get(path, set()))
    )
    if problems:
        raise ConfigError(problems, header=f"DeepSpeed config ({origin})")
    _prefer_torch_adam(r)  # last: the machine probe may import torch, which a broken config need not pay
    return ResolvedDeepSpeed(config=r.config, sources=r.sources, run=final_run, origin=origin, notes=notes)


def _drop_comments(node: dict[str, Any], sources: dict[str, str], prefix: str = "") -> None:
    # DeepSpeed's pydantic sections refuse unknown keys, `_comment` included: the config it gets has none.
    for key in list(node):
        path = f"{prefix}.{key}" if prefix else key
        if is_comment(key):
            del node[key]
            for stale in [k for k in sources if k == path or k.startswith(path + ".")]:
                del sources[stale]
        elif isinstance(node[key], dict):
            _drop_comments(node[key], sources, path)


# "auto" values computed from other keys: when those are wrong, the "auto" left over is not a second defect.
_DERIVED_FROM = {"train_batch_size": {"train_micro_batch_size_per_gpu", "gradient_accumulation_steps"}}


def validate_run_values(run: RunValues) -> list[Problem]:
    out = []
    if run.precision not in PRECISIONS:
        out.append(Problem("--precision", f"must be one of {', '.join(PRECISIONS)}", run.precision))
    if run.lr_schedule not in LR_SCHEDULES:
        out.append(Problem("--lr-schedule", f"must be one of {', '.join(LR_SCHEDULES)}", run.lr_schedule))
    if run.warmup_steps > run.total_steps:
        out.append(Problem("--warmup-steps", f"exceeds the run's {run.total_steps} steps", run.warmup_steps))
    return out


def _bind_parallel(r: _Resolver) -> None:
    # Only where the user wrote the section: DeepSpeed's own defaults need no value, and an AutoTP section
    # with autotp_size > 1 switches AutoTP on.
    if isinstance(r.get("pipeline"), dict):
        r.bind("pipeline.stages", "pipeline_stages", r.run.pipeline_stages, option="--pipeline-stages")
    if isinstance(r.get("tensor_parallel"), dict):
        r.bind(
            "tensor_parallel.autotp_size",
            "tensor_parallel",
            r.run.tensor_parallel,
            option="--tensor-parallel",
        )
    if "sequence_parallel_size" in r.config or r.run.sequence_parallel > 1:
        r.bind(
            "sequence_parallel_size",
            "sequence_parallel",
            r.run.sequence_parallel,
            option="--sequence-parallel",
        )
    for name in ("pipeline_stages", "tensor_parallel", "sequence_parallel"):
        if name in r.adopted and (_as_int(r.adopted[name]) or 0) < 1:
            del r.adopted[name]  # a wrong type or 0: reported by the schema, keep the option's value


def _bind_batch(r: _Resolver) -> None:
    """DeepSpeed's batch arithmetic: train_batch_size = micro x accum x dp. Of the three, the file may give any
    two and DeepSpeed derives the third; an option the user typed counts as given, a default does not."""
    run = r.run
    layout = {
        k: v for k, v in r.adopted.items() if k in ("pipeline_stages", "tensor_parallel", "sequence_parallel")
    }
    topology = replace(run, **layout).topology if layout else run.topology
    dp = topology.data_parallel
    total = _given(r, "train_batch_size")
    micro_given = _given(r, "train_micro_batch_size_per_gpu") or ("micro_batch" in run.explicit)
    accum_given = _given(r, "gradient_accumulation_steps") or ("grad_accum" in run.explicit)
    if total is not None and not (micro_given and accum_given):
        _derive_from_total(r, total, dp, micro_given, accum_given)
    r.bind("train_micro_batch_size_per_gpu", "micro_batch", run.micro_batch, option="--micro-batch")
    r.bind("gradient_accumulation_steps", "grad_accum", run.grad_accum, option="--grad-accum")
    micro = _as_int(r.adopted.get("micro_batch", run.micro_batch))
    accum = _as_int(r.adopted.get("grad_accum", run.grad_accum))
    expected = None if micro is None or accum is None else topology.global_batch(micro, accum)
    current = r.get("train_batch_size")
    if current is None or current == AUTO:
        if expected is not None:
            r.put("train_batch_size", expected, f"derived: micro {micro} x accum {accum} x dp {dp}")
    elif (
        micro is not None
        and accum is not None
        and expected is not None
        and _as_int(current) is not None
        and current != expected
        and not any(p.path == "train_batch_size" for p in r.problems)  # already reported as unsplittable
    ):
        r.problems.append(
            Problem(
                "train_batch_size",
                f"!= train_micro_batch_size_per_gpu({micro}) * gradient_accumulation_steps({accum})"
                f" * data_parallel_size({dp}) = {expected}",
                current,
                fix=_batch_fix(current, micro, accum, dp, run),
            )
        )


def _given(r: _Resolver, path: str) -> Any:
    value = r.get(path)
    return None if value == AUTO else _as_int(value)


def _derive_from_total(r: _Resolver, total: int, dp: int, micro_given: bool, accum_given: bool) -> None:
    """Fill the member of (micro, accum) the file leaves out, from train_batch_size (as DeepSpeed does)."""
    run = r.run
    if micro_given:
        micro = _given(r, "train_micro_batch_size_per_gpu") or run.micro_batch
        path, option, name, per = "gradient_accumulation_steps", "--grad-accum", "grad_accum", micro * dp
    elif accum_given:
        accum = _given(r, "gradient_accumulation_steps") or run.grad_accum
        path, option, name, per = "train_micro_batch_size_per_gpu", "--micro-batch", "micro_batch", accum * dp
    else:
        # Only the global batch: DeepSpeed accumulates 1 micro-batch and splits the batch over the ranks.
        r.put(
            "gradient_accumulation_steps", 1, "derived (DeepSpeed's rule when only train_batch_size is given)"
        )
        r.adopted["grad_accum"] = 1
        path, option, name, per = "train_micro_batch_size_per_gpu", "--micro-batch", "micro_batch", dp
    if total % per or total < per:
        r.problems.append(
            Problem(
                "train_batch_size",
                f"cannot be split: {total} is not a multiple of {per} (the other batch factors x data-parallel "
                f"size {dp})",
                total,
                fix=f"pass {option} or --world-size so that the product is {total}, or set train_batch_size "
                '"auto"',
            )
        )
        return
    r.put(path, total // per, f"derived: train_batch_size {total} / {per}")
    r.adopted[name] = total // per


def _batch_fix(total: Any, micro: int, accum: int, dp: int, run: RunValues) -> str:
    if isinstance(total, int) and total % (micro * dp) == 0 and "grad_accum" not in run.explicit:
        return f'set gradient_accumulation_steps to {total // (micro * dp)} or train_batch_size to "auto"'
    if isinstance(total, int) and total % (accum * dp) == 0 and "micro_batch" not in run.explicit:
        return f'pass --micro-batch {total // (accum * dp)}, or set train_batch_size to "auto"'
    return 'set train_batch_size to "auto" (derived from the other two), or pass --world-size to match it'


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bind_precision(r: _Resolver) -> None:
    precision = r.run.precision
    explicit = "precision" in r.run.explicit
    given = {mode: r.get(f"{mode}.enabled") for mode in ("bf16", "fp16")}
    if given["bf16"] is True and given["fp16"] is True:
        r.problems.append(Problem("fp16.enabled", "bf16 and fp16 are both enabled", True, fix="enable one"))
        return
    label = f"{'option' if explicit else 'default of'} --precision"
    if not explicit:
        # The JSON decides when --precision was not given: a mode switched on, or the default's mode off (fp32).
        chosen = next((mode for mode, value in given.items() if value is True), None)
        if chosen is None and given.get(precision) is False:
            chosen = "fp32"
        if chosen is not None and chosen != precision:
            r.adopted["precision"] = precision = chosen
            label = f"derived from the file's {chosen}" + (
                ".enabled" if chosen != "fp32" else " (no 16-bit mode on)"
            )
    for mode in ("bf16", "fp16"):
        enabled, wanted = given[mode], precision == mode
        if enabled is None or enabled == AUTO:
            r.put(f"{mode}.enabled", wanted, label + (" (filled 'auto')" if enabled == AUTO else ""))
        elif isinstance(enabled, bool) and enabled is not wanted:
            r.problems.append(
                Problem(
                    f"{mode}.enabled",
                    f"contradicts --precision {precision}",
                    enabled,
                    fix='set it to "auto" or drop --precision',
                )
            )


def _bind_optimizer(r: _Resolver) -> None:
    run = r.run
    if r.get("optimizer") is None:
        r.put("optimizer.type", "AdamW", "derived (no optimizer section)")
    r.bind("optimizer.params.lr", "lr", run.lr, option="--lr")
    r.bind("optimizer.params.weight_decay", "weight_decay", run.weight_decay, option="--weight-decay")
    r.bind("optimizer.params.betas", "betas", list(run.betas), option="--betas")
    r.bind("optimizer.params.eps", "eps", run.eps, option="--eps")
    if isinstance(r.adopted.get("betas"), list):
        r.adopted["betas"] = tuple(r.adopted["betas"])


def _cpu_only(r: _Resolver) -> bool:
    """The run's device, probed only when a rule needs it (the probe may import torch)."""
    if r.run.cpu_only is None:
        from scaling.config.device import cuda_available

        return not cuda_available()
    return r.run.cpu_only


def _prefer_torch_adam(r: _Resolver) -> None:
    kind = str(r.get("optimizer.type") or "").lower()
    if kind not in {"adam", "adamw"} or r.get("optimizer.params.torch_adam") is not None:
        return
    cpu_only = _cpu_only(r)
    if not cpu_only and _offloads_optimizer(r):
        return  # DeepSpeedCPUAdam is what ZeRO-Offload is for
    # DeepSpeed would JIT-compile its own Adam: ~50 s on 2 CPU cores, and on CUDA a FusedAdam build that
    # fails outright where TORCH_CUDA_ARCH_LIST names an arch-specific target such as "9.0a" (H200 image,
    # DeepSpeed 0.19.8). torch's AdamW is the same maths; on an H200 it ran at 1.003x a plain torch loop.
    r.put("optimizer.params.torch_adam", True, "derived (torch AdamW instead of a JIT-built op)")
    if not cpu_only and r.get("optimizer.params.fused") is None:
        r.put("optimizer.params.fused", True, "derived (CUDA: torch's fused AdamW kernel)")
    if kind == "adamw":
        r.put("optimizer.params.adam_w_mode", True, "derived (AdamW)")


def _offloads_optimizer(r: _Resolver) -> bool:
    """Whether ZeRO-Offload steps the optimizer on the host (with DeepSpeedCPUAdam unless torch_adam)."""
    device = r.get("zero_optimization.offload_optimizer.device")
    return str(device or "none").lower() in {"cpu", "nvme"}


SCHEDULERS = {"linear": "WarmupDecayLR", "cosine": "WarmupCosineLR", "constant": "WarmupLR"}


def _bind_scheduler(r: _Resolver) -> None:
    run = r.run
    if r.get("scheduler") is None:
        # No section: the engine runs its own HF-style schedule from the run options (linear warmup from 0,
        # then linear/cosine/constant), which DeepSpeed's WarmupDecayLR cannot express for warmup 0.
        return
    if r.get("scheduler.type") not in (None, AUTO) and "lr_schedule" in run.explicit:
        wanted = SCHEDULERS.get(run.lr_schedule)
        if wanted and r.get("scheduler.type") != wanted:
            r.problems.append(
                Problem(
                    "scheduler.type",
                    f"contradicts --lr-schedule {run.lr_schedule} ({wanted})",
                    r.get("scheduler.type"),
                    fix="drop the scheduler section or --lr-schedule",
                )
            )
    kind = r.get("scheduler.type")
    r.bind("scheduler.params.warmup_num_steps", "warmup_steps", run.warmup_steps, option="--warmup-steps")
    if r.get("scheduler.params.warmup_type") is None:
        r.put("scheduler.params.warmup_type", "linear", "derived (DeepSpeed's default is log)")
    lr = r.adopted.get("lr", run.lr)
    if kind in ("WarmupDecayLR", "WarmupLR"):
        _fill(r, "scheduler.params.warmup_max_lr", lr, "derived from the optimizer lr")
        _fill(r, "scheduler.params.warmup_min_lr", 0.0, "derived (warmup starts at 0)")
    if kind in ("WarmupDecayLR", "WarmupCosineLR"):
        r.bind("scheduler.params.total_num_steps", "total_steps", run.total_steps, option="--max-steps")
    if kind == "WarmupCosineLR":
        _fill(r, "scheduler.params.warmup_min_ratio", 0.0, "derived (warmup starts at 0)")
        r.bind("scheduler.params.cos_min_ratio", "min_lr_ratio", run.min_lr_ratio, option="--min-lr-ratio")


def _fix_zero_warmup(r: _Resolver) -> None:
    # DeepSpeed's warmup schedulers raise on warmup_num_steps == 0. One warmup step that starts at the peak
    # lr is the same schedule as none (the first step runs at lr either way).
    kind = r.get("scheduler.type")
    if (
        kind not in ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR")
        or r.get("scheduler.params.warmup_num_steps") != 0
    ):
        return
    why = "derived (DeepSpeed rejects 0 warmup steps: 1 step starting at the peak lr)"
    r.put("scheduler.params.warmup_num_steps", 1, why)
    if kind == "WarmupCosineLR":
        r.put("scheduler.params.warmup_min_ratio", 1.0, why)
    else:
        r.put("scheduler.params.warmup_min_lr", r.get("scheduler.params.warmup_max_lr"), why)


def _fill(r: _Resolver, path: str, value: Any, source: str) -> None:
    current = r.get(path)
    if current is None or current == AUTO:
        r.put(path, value, source + (" (filled 'auto')" if current == AUTO else ""))


def _fill_zero_autos(r: _Resolver) -> None:
    # The HF Trainer's rule for these knobs: sized from the model width.
    hidden = r.run.hidden_size
    rules = {
        "zero_optimization.reduce_bucket_size": (lambda h: h * h),
        "zero_optimization.stage3_prefetch_bucket_size": (lambda h: int(0.9 * h * h)),
        "zero_optimization.stage3_param_persistence_threshold": (lambda h: 10 * h),
    }
    if r.get("zero_optimization.zero_hpz_partition_size") == AUTO:
        # hpZ's secondary partition spans one node; unknown node size: a single-node job's whole world.
        per_node = r.run.gpus_per_node or min(r.run.world_size, ASSUMED_GPUS_PER_NODE)
        r.put(
            "zero_optimization.zero_hpz_partition_size",
            per_node,
            f"derived: GPUs per node ({'given' if r.run.gpus_per_node else 'assumed'})",
        )
    # Without a model (e.g. `scaling config validate FILE`), "auto" falls back to DeepSpeed's own defaults.
    fallback = {
        "zero_optimization.reduce_bucket_size": 500_000_000,
        "zero_optimization.stage3_prefetch_bucket_size": 50_000_000,
        "zero_optimization.stage3_param_persistence_threshold": 100_000,
    }
    for hf_path, rule in rules.items():
        # DeepSpeed's field name (without stage3_) means the same key as the alias the HF rule names.
        unprefixed = hf_path.replace(".stage3_", ".")
        path = unprefixed if r.get(unprefixed) == AUTO else hf_path
        if r.get(path) == AUTO:
            if hidden is None:
                r.put(
                    path,
                    fallback[hf_path],
                    "DeepSpeed default (filled 'auto'; no model hidden size for the HF rule)",
                )
            else:
                r.put(path, rule(hidden), f"derived from hidden_size {hidden} (HF rule)")


def _autos_left(node: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _autos_left(value, f"{prefix}.{key}" if prefix else key)
    elif node == AUTO:
        yield prefix
