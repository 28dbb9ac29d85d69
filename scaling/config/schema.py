"""A strict schema of the DeepSpeed JSON keys users actually write, checked in pure Python.

DeepSpeed 0.19.8 validates some sections with pydantic but silently accepts unknown top-level keys, unknown
`activation_checkpointing` keys, `"gradient_clipping": "abc"` and `"stage": "2"`, and checks scheduler and
optimizer params only inside `deepspeed.initialize` (see shared/notes/deepspeed-on-cpu.md §6). This module
catches all of those before anything is launched, without importing deepspeed (~2 s) or torch.

Key names follow DeepSpeed 0.19.8's sources (runtime/constants.py, runtime/zero/config.py,
runtime/zero/offload_config.py, runtime/precision_config.py, monitor/config.py, comm/config.py,
profiling/constants.py, runtime/swap_tensor/constants.py, runtime/lr_schedules.py, runtime/tensor_parallel).
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scaling.errors import Problem

AUTO = "auto"


@dataclass(frozen=True)
class Key:
    """What one JSON key may hold."""

    kind: str
    """bool, int, number, str, list, any, or obj (a nested section)."""
    auto: bool = False
    """Whether "auto" is allowed (filled from the run options by `resolve_deepspeed`)."""
    choices: tuple[Any, ...] = ()
    """Allowed values (strings compare case-sensitively unless `fold` is set)."""
    fold: bool = False
    """Compare string choices case-insensitively (DeepSpeed lower-cases optimizer names)."""
    minimum: float | None = None
    """Smallest allowed number."""
    exclusive: bool = False
    """Whether `minimum` itself is excluded (pydantic's gt)."""
    maximum: float | None = None
    """Largest allowed number."""
    canonical: str = ""
    """For an alias DeepSpeed accepts as well as the field name: that field name (diffs fold the two)."""
    children: dict[str, Key] | None = None
    """Keys of a nested section; None with kind obj means any keys are accepted."""
    old: str = ""
    """Deprecated but still accepted by DeepSpeed 0.19.8: the key to use instead."""
    nullable: bool = False
    """Whether JSON null is accepted."""


def _obj(children: dict[str, Key] | None = None, **kw: Any) -> Key:
    return Key("obj", children=children, **kw)


B = Key("bool")
I0 = Key("int", minimum=0)
I1 = Key("int", minimum=1)
N0 = Key("number", minimum=0)
N = Key("number")
S = Key("str")
ANY = Key("any")
BA = Key("bool", auto=True)
IA1 = Key("int", auto=True, minimum=1)
NA0 = Key("number", auto=True, minimum=0)
DTYPE = Key(
    "str",
    choices=(
        "fp32",
        "fp16",
        "bf16",
        "float32",
        "float16",
        "bfloat16",
        "torch.float32",
        "torch.float16",
        "torch.bfloat16",
        "float",
        "half",
    ),
    nullable=True,
)

REMOVED_ZERO = {
    "mics_shard_size": "MiCS was removed from DeepSpeed",
    "mics_hierarchical_params_gather": "MiCS was removed from DeepSpeed",
    "zeropp_loco_param": "LoCo-ZeRO++ was removed from DeepSpeed",
}

_ADAM_PARAMS = {
    "lr": NA0,
    "betas": Key("list", auto=True),
    "eps": NA0,
    "weight_decay": NA0,
    "torch_adam": B,
    "adam_w_mode": B,
    "amsgrad": B,
    "bias_correction": B,
    "fp32_optimizer_states": B,
    "foreach": Key("bool", nullable=True),
    "fused": B,
}
OPTIMIZER_PARAMS: dict[str, dict[str, Key]] = {
    "adam": _ADAM_PARAMS,
    "adamw": _ADAM_PARAMS,
    "lamb": {
        "lr": NA0,
        "betas": Key("list", auto=True),
        "eps": NA0,
        "weight_decay": NA0,
        "bias_correction": B,
        "eps_inside_sqrt": B,
        "max_grad_norm": N0,
        "max_coeff": N0,
        "min_coeff": N0,
        "amsgrad": B,
    },
    "lion": {"lr": NA0, "betas": Key("list", auto=True), "weight_decay": NA0, "fp32_optimizer_states": B},
    "adagrad": {"lr": NA0, "eps": NA0, "weight_decay": NA0, "amsgrad": B, "fp32_optimizer_states": B},
    "muon": {
        "lr": NA0,
        "momentum": N0,
        "weight_decay": NA0,
        "betas": Key("list", auto=True),
        "eps": NA0,
        "muon_lr": N0,
        "adam_lr": N0,
        "ns_method": S,
    },
}

_WARMUP = {
    "warmup_min_lr": NA0,
    "warmup_max_lr": NA0,
    "warmup_num_steps": Key("int", auto=True, minimum=0),
    "warmup_type": Key("str", choices=("log", "linear")),
    "last_batch_iteration": Key("int", minimum=-1),
}
SCHEDULER_PARAMS: dict[str, dict[str, Key]] = {
    "WarmupLR": _WARMUP,
    "WarmupDecayLR": {**_WARMUP, "total_num_steps": Key("int", auto=True, minimum=1)},
    "WarmupCosineLR": {
        "total_num_steps": Key("int", auto=True, minimum=1),
        "warmup_min_ratio": Key("number", auto=True, minimum=0),
        "warmup_num_steps": Key("int", auto=True, minimum=0),
        "cos_min_ratio": Key("number", auto=True, minimum=0),
        "warmup_type": Key("str", choices=("log", "linear")),
        "last_batch_iteration": Key("int", minimum=-1),
    },
    "OneCycle": {
        "cycle_min_lr": N0,
        "cycle_max_lr": N0,
        "decay_lr_rate": N0,
        "cycle_first_step_size": I1,
        "cycle_second_step_size": Key("int", minimum=1, nullable=True),
        "cycle_first_stair_count": I0,
        "cycle_second_stair_count": Key("int", minimum=0, nullable=True),
        "decay_step_size": I0,
        "cycle_momentum": B,
        "cycle_min_mom": N0,
        "cycle_max_mom": N0,
        "decay_mom_rate": N0,
        "last_batch_iteration": Key("int", minimum=-1),
    },
    "LRRangeTest": {
        "lr_range_test_min_lr": N0,
        "lr_range_test_step_size": I1,
        "lr_range_test_step_rate": N0,
        "lr_range_test_staircase": B,
        "last_batch_iteration": Key("int", minimum=-1),
    },
}

_HAND_WRITTEN_TOP: dict[str, Key] = {
    "train_batch_size": IA1,
    "train_micro_batch_size_per_gpu": IA1,
    "gradient_accumulation_steps": IA1,
    "managed_gradient_accumulation": B,
    "steps_per_print": I1,
    "dump_state": B,
    "disable_python_gc": Key("int", minimum=0),
    "gradient_clipping": NA0,
    "prescale_gradients": B,
    "gradient_predivide_factor": Key("number", minimum=0),
    "gradient_allreduce_op": Key("str", choices=("mean", "sum")),
    "communication_data_type": DTYPE,
    "seq_parallel_communication_data_type": DTYPE,
    "disable_allgather": B,
    "wall_clock_breakdown": B,
    "memory_breakdown": B,
    "zero_allow_untested_optimizer": B,
    "zero_force_ds_cpu_optimizer": B,
    "dataloader_drop_last": B,
    "vocabulary_size": Key("int", minimum=1, nullable=True),
    "sequence_parallel_size": I1,
    "use_data_before_expert_parallelism": B,
    "log_level": Key("str", choices=("debug", "info", "warning", "error", "critical")),
    "optimizer": _obj({"type": S, "params": _obj(None), "legacy_fusion": B}),
    "scheduler": _obj({"type": Key("str", choices=tuple(SCHEDULER_PARAMS)), "params": _obj(None)}),
    "torch_autocast": _obj({"enabled": B, "dtype": DTYPE, "lower_precision_safe_modules": Key("list")}),
    "data_types": _obj(
        {"grad_accum_dtype": DTYPE, "param_dtype": DTYPE, "buffer_dtype": DTYPE, "keep_in_fp32_modules": ANY}
    ),
    "activation_checkpointing": _obj(
        {
            "partition_activations": B,
            "contiguous_memory_optimization": B,
            "cpu_checkpointing": B,
            "number_checkpoints": Key("int", minimum=1, nullable=True),
            "synchronize_checkpoint_boundary": B,
            "profile": B,
        }
    ),
    "pipeline": _obj(
        {
            "stages": Key("int", auto=True, minimum=1),
            "partition": S,
            "seed_layers": B,
            "activation_checkpoint_interval": I0,
            "pipe_partitioned": B,
            "grad_partitioned": B,
            "use_reentrant": B,
        }
    ),
    "flops_profiler": _obj(
        {
            "enabled": B,
            "recompute_fwd_factor": N0,
            "profile_step": I1,
            "module_depth": Key("int"),
            "top_modules": I1,
            "detailed": B,
            "output_file": Key("str", nullable=True),
        }
    ),
    "checkpoint": _obj(
        {
            "tag_validation": Key(
                "str", choices=("Ignore", "Warn", "Fail", "IGNORE", "WARN", "FAIL", "ignore", "warn", "fail")
            ),
            "load_universal": B,
            "use_node_local_storage": B,
            "parallel_write": _obj({"pipeline_stage": B}),
            "checkpoint_serialization": B,
            "writer": _obj(None),
        }
    ),
    "aio": _obj(
        {
            "block_size": I1,
            "queue_depth": I1,
            "intra_op_parallelism": I1,
            "thread_count": I1,
            "single_submit": B,
            "overlap_events": B,
            "use_gds": B,
        }
    ),
    "timers": _obj(None),
    # deepspeed/autotuning/constants.py (a plain class: DeepSpeed ignores misspelt keys here).
    "autotuning": _obj(
        {
            **dict.fromkeys(("enabled", "fast", "overwrite", "tuner_early_stopping"), ANY),
            **dict.fromkeys(("results_dir", "exps_dir", "metric_path", "model_info_path", "tuner_type"), ANY),
            **dict.fromkeys(("start_profile_step", "end_profile_step", "tuner_num_trials", "mp_size"), ANY),
            **dict.fromkeys(("max_train_batch_size", "min_train_batch_size", "metric"), ANY),
            **dict.fromkeys(
                ("max_train_micro_batch_size_per_gpu", "min_train_micro_batch_size_per_gpu"), ANY
            ),
            "num_tuning_micro_batch_sizes": ANY,
            "arg_mappings": _obj(None),
            "model_info": _obj(None),
        }
    ),
    "data_efficiency": _obj(None),
    "weight_quantization": _obj(None),
    "expert_parallel": _obj(None),
    "datastates_ckpt": _obj(None),
}
# Keys real projects write (LLaMA-Factory's fp8 example) that DeepSpeed 0.19.8 ignores without a word: they
# name DeepSpeedConfig attributes, not JSON keys. Accepted like DeepSpeed accepts them, with a note.
IGNORED_TOP = {
    "comms_config": "comms_logger",
    "monitor_config": "tensorboard, wandb, csv_monitor or comet at the top level",
}
REMOVED_TOP = {
    "nebula": "Nebula checkpointing was removed from DeepSpeed",
    "compression_training": "the DeepSpeed compression library was removed (use `scaling compress`)",
    "amp": "Apex AMP was removed; use bf16, fp16 or torch_autocast",
    "quantize_training": "MoQ was removed from DeepSpeed",
    "sparse_gradients": "sparse embedding-gradient compression was removed from DeepSpeed",
    "eigenvalue": "eigenvalue MoQ was removed from DeepSpeed",
    "sparse_attention": "Sparse Attention was removed from DeepSpeed",
    "elasticity": "elastic training was removed; set the batch keys directly",
    "graph_harvesting": "graph harvesting was removed from DeepSpeed",
    "curriculum_learning": "use data_efficiency.data_sampling.curriculum_learning",
    "progressive_layer_drop": "Progressive Layer Drop was removed from DeepSpeed",
}


# Bounds DeepSpeed does not declare but whose violation only fails later, inside the engine.
_EXTRA_BOUNDS = {
    "fp16": {"loss_scale": 0, "initial_scale_power": 0, "loss_scale_window": 1, "hysteresis": 1},
}


def _key_from_model(field_spec: dict[str, Any], canonical: str = "", extra_min: float | None = None) -> Key:
    children = field_spec.get("children")
    minimum = field_spec.get("minimum", field_spec.get("exclusive_minimum", extra_min))
    return Key(
        field_spec["kind"],
        auto=True,  # DeepSpeedConfigModel drops "auto" values: the field keeps DeepSpeed's default
        choices=tuple(field_spec.get("choices", ())),
        minimum=minimum,
        exclusive="exclusive_minimum" in field_spec,
        maximum=field_spec.get("maximum"),
        children=_section_from_model(children) if children is not None else None,
        old=field_spec.get("new_param", "") if field_spec.get("deprecated") else "",
        nullable=field_spec.get("nullable", False),
        canonical=canonical,
    )


def _section_from_model(fields: dict[str, dict[str, Any]], section: str = "") -> dict[str, Key]:
    """Keys of one pydantic-modelled section: every field under its name and under its alias."""
    extra = _EXTRA_BOUNDS.get(section, {})
    out: dict[str, Key] = {}
    for name, spec in fields.items():
        out[name] = _key_from_model(spec, extra_min=extra.get(name))
        if "alias" in spec:
            out[spec["alias"]] = _key_from_model(spec, canonical=name, extra_min=extra.get(name))
    return out


@functools.cache
def top_spec() -> dict[str, Key]:
    """The whole schema: DeepSpeed's modelled sections (from its pydantic models) and the hand-written rest."""
    from scaling.config.deepspeed_models import model_fields_spec

    top = dict(_HAND_WRITTEN_TOP)
    for section, fields in model_fields_spec().items():
        top[section] = _obj(_section_from_model(fields, section), old="bf16" if section == "bfloat16" else "")
    return top


def canonical_path(path: str) -> str:
    """`zero_optimization.stage3_max_live_parameters` -> `zero_optimization.max_live_parameters`: the name
    DeepSpeed's model uses for a key written under its alias (both mean the same field)."""
    spec: dict[str, Key] | None = top_spec()
    out = []
    for part in path.split("."):
        key = spec.get(part) if spec is not None else None
        out.append(key.canonical if key is not None and key.canonical else part)
        spec = key.children if key is not None else None
    return ".".join(out)


def is_comment(key: str) -> bool:
    """Keys starting with `_` are annotations (`"_comment": "..."`): kept in the file, ignored."""
    return key.startswith("_")


@dataclass
class _Checker:
    problems: list[Problem] = field(default_factory=list)
    deprecated: list[Problem] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def section(
        self, node: Any, spec: dict[str, Key], prefix: str, removed: dict[str, str] | None = None
    ) -> None:
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            if is_comment(key):
                self.comments.append(path)
                continue
            if not prefix and key in IGNORED_TOP:
                fix = f"use {IGNORED_TOP[key]}"
                self.deprecated.append(Problem(path, "DeepSpeed ignores this key: it has no effect", fix=fix))
                continue
            if removed and key in removed:
                self.problems.append(Problem(path, f"no longer supported: {removed[key]}", fix="remove it"))
                continue
            child = spec.get(key)
            if child is None:
                candidates = {**spec, **dict.fromkeys(IGNORED_TOP, ANY)} if not prefix else spec
                self.problems.append(_unknown(path, key, candidates, value))
                continue
            if child.old:
                new = f"{prefix}.{child.old}" if prefix else child.old
                self.deprecated.append(Problem(path, "deprecated", value, fix=f"use {new}"))
            self.value(value, child, path)

    def value(self, value: Any, spec: Key, path: str) -> None:
        if value is None:
            if not spec.nullable:
                self.problems.append(
                    Problem(
                        path,
                        f"null where a {_noun(spec)} is expected",
                        None,
                        fix="give a value or remove the key",
                    )
                )
            return
        if value == AUTO and isinstance(value, str):
            if not spec.auto and spec.kind != "any":
                self.problems.append(
                    Problem(path, '"auto" is not supported for this key', value, fix=f"give a {_noun(spec)}")
                )
            return
        if not _type_ok(value, spec.kind):
            self.problems.append(_wrong_type(path, value, spec))
            return
        if spec.kind == "obj":
            if spec.children is not None:
                self.section(
                    value, spec.children, path, REMOVED_ZERO if path == "zero_optimization" else None
                )
            return
        if spec.choices and not _in_choices(value, spec):
            hint = _did_you_mean(str(value), [str(c) for c in spec.choices])
            self.problems.append(
                Problem(path, f"must be one of {', '.join(map(str, spec.choices))}", value, fix=hint)
            )
            return
        if isinstance(value, int | float):
            self._bounds(value, spec, path)
        if isinstance(value, float) and not math.isfinite(value):
            self.problems.append(Problem(path, "must be finite", value))

    def _bounds(self, value: float, spec: Key, path: str) -> None:
        low, high = spec.minimum, spec.maximum
        if low is not None and (value <= low if spec.exclusive else value < low):
            self.problems.append(Problem(path, f"must be {'>' if spec.exclusive else '>='} {low:g}", value))
        elif high is not None and value > high:
            self.problems.append(Problem(path, f"must be <= {high:g}", value))


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        # 5e8 parses as a float; DeepSpeed's pydantic models accept whole floats, and users write them.
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, list)
    if kind == "obj":
        return isinstance(value, dict)
    raise AssertionError(kind)


def _noun(spec: Key) -> str:
    return {
        "bool": "true/false",
        "int": "whole number",
        "number": "number",
        "str": "string",
        "list": "list",
        "obj": "JSON object",
        "any": "value",
    }[spec.kind]


def _wrong_type(path: str, value: Any, spec: Key) -> Problem:
    message = f"expected a {_noun(spec)}, got {_json_type(value)}"
    fix = ""
    if isinstance(value, str):
        stripped = value.strip().lower()
        if spec.kind in ("int", "number") and _parses_number(stripped):
            fix = f"write the number without quotes: {stripped}"
        elif spec.kind == "bool" and stripped in ("true", "false"):
            fix = f"write {stripped} without quotes"
    elif spec.kind == "bool" and value in (0, 1):
        fix = f"write {'true' if value else 'false'}"
    elif spec.kind == "obj" and spec.children and "enabled" in spec.children and isinstance(value, bool):
        fix = f'write {{"enabled": {str(value).lower()}}}'
    return Problem(path, message, value, fix=fix)


def _parses_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _in_choices(value: Any, spec: Key) -> bool:
    if spec.fold and isinstance(value, str):
        return value.lower() in {str(c).lower() for c in spec.choices}
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return any(value == c and type(value) is type(c) for c in spec.choices)


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    options = list(options)
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close:  # short names ("rl" for "lr") are too short for difflib's ratio
        close = [o for o in options if o.lower() == word.lower() or sorted(o) == sorted(word)]
    return f"did you mean {close[0]!r}?" if close else ""


def _unknown(path: str, key: str, spec: dict[str, Key], value: Any) -> Problem:
    hint = _did_you_mean(key, spec)
    return Problem(path, "unknown key", value, fix=hint or f"known keys: {', '.join(sorted(spec))}")


def check_schema(config: dict[str, Any]) -> tuple[list[Problem], list[Problem]]:
    """Check key names, types and allowed values at every level.

    Returns (problems, notes): problems make the config invalid; notes are advice (keys DeepSpeed still
    accepts under an old name, `_comment` keys that are ignored).
    """
    c = _Checker()
    c.section(config, top_spec(), "", REMOVED_TOP)
    _check_optimizer(c, config.get("optimizer"))
    _check_scheduler(c, config.get("scheduler"))
    notes = list(c.deprecated)
    if c.comments:
        notes.append(
            Problem(
                ", ".join(c.comments),
                "keys starting with '_' are comments: kept in the file, left out of the config DeepSpeed gets",
            )
        )
    return c.problems, notes


def deepspeed_optimizers() -> list[str]:
    """Optimizer `type` names DeepSpeed builds itself (any other name must be a torch.optim class)."""
    from scaling.config.deepspeed_models import optimizer_names

    return optimizer_names()


def _torch_optimizers() -> list[str]:
    import torch.optim  # deferred: only a type that is not DeepSpeed's own needs torch's list

    return [n for n in dir(torch.optim) if n[:1].isupper() and n != "Optimizer"]


def _check_optimizer(c: _Checker, section: Any) -> None:
    if not isinstance(section, dict):
        return
    kind = section.get("type")
    params = section.get("params")
    own = deepspeed_optimizers()
    if kind is None:
        c.problems.append(Problem("optimizer.type", "missing", fix=f"one of {', '.join(own)}"))
        return
    if not isinstance(kind, str) or not isinstance(params, dict):
        return
    spec = OPTIMIZER_PARAMS.get(kind.lower())
    if kind.lower() not in own:
        # DeepSpeed looks any other name up in torch.optim, case-sensitively, only inside initialize().
        torch_names = _torch_optimizers()
        if kind not in torch_names:
            hint = _did_you_mean(kind, [*own, *torch_names]) or _did_you_mean(kind.lower(), own)
            c.problems.append(
                Problem(
                    "optimizer.type",
                    "neither a DeepSpeed optimizer nor a torch.optim class",
                    kind,
                    fix=hint or f"one of {', '.join(own)} or a torch.optim class such as SGD",
                )
            )
        return
    if spec is None:
        return  # a DeepSpeed optimizer whose params we do not model (MuAdam...): accept them as given
    c.section(params, spec, "optimizer.params")
    betas = params.get("betas")
    if isinstance(betas, list):
        if len(betas) != 2 or not all(_type_ok(b, "number") for b in betas):
            c.problems.append(Problem("optimizer.params.betas", "expected two numbers [beta1, beta2]", betas))
        elif not all(0 <= b < 1 for b in betas):
            c.problems.append(
                Problem(
                    "optimizer.params.betas", "each beta must be in [0, 1)", betas, fix="e.g. [0.9, 0.999]"
                )
            )
    eps = params.get("eps")
    if _type_ok(eps, "number") and eps <= 0:
        c.problems.append(
            Problem("optimizer.params.eps", "must be > 0 (it guards a division)", eps, fix="1e-8")
        )


def _check_scheduler(c: _Checker, section: Any) -> None:
    if not isinstance(section, dict):
        return
    kind = section.get("type")
    params = section.get("params")
    if kind is None:
        c.problems.append(Problem("scheduler.type", "missing", fix=f"one of {', '.join(SCHEDULER_PARAMS)}"))
        return
    spec = SCHEDULER_PARAMS.get(kind) if isinstance(kind, str) else None
    if spec is not None and isinstance(params, dict):
        c.section(params, spec, "scheduler.params")


# -- cross-field checks ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Degrees:
    """The parallel layout a config is checked against."""

    world_size: int = 1
    """Processes in the job."""
    tensor_parallel: int = 1
    """AutoTP degree."""
    pipeline_stages: int = 1
    """Pipeline degree."""
    sequence_parallel: int = 1
    """Ulysses sequence-parallel degree."""
    num_heads: int | None = None
    """Attention heads of the model, when one is given (TP and SP must divide them)."""
    kv_heads: int | None = None
    """Key/value heads of the model, when one is given (SP must divide them, or they it)."""


def _get(config: dict[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def zero_stage(config: dict[str, Any]) -> int:
    return _int(_get(config, "zero_optimization.stage")) or 0


def offload_device(config: dict[str, Any], what: str) -> str:
    """'none', 'cpu' or 'nvme' for what = 'optimizer' or 'param' (old `cpu_offload*` flags count as cpu)."""
    device = _get(config, f"zero_optimization.offload_{what}.device")
    if isinstance(device, str):
        return device
    old = "cpu_offload" if what == "optimizer" else "cpu_offload_param"
    return "cpu" if _get(config, f"zero_optimization.{old}") is True else "none"


def _sequence_parallel_problems(
    config: dict[str, Any], degrees: Degrees, stage: int, world: int, tp: int, pp: int
) -> list[Problem]:
    sp = degrees.sequence_parallel
    json_sp = _int(_get(config, "sequence_parallel_size"))
    if json_sp and json_sp > 1 and sp == 1:
        sp = json_sp
    if sp <= 1:
        return []
    out: list[Problem] = []
    if tp > 1 or pp > 1:
        out.append(
            Problem(
                "--sequence-parallel",
                "combines with data parallelism and ZeRO only, not with tensor or pipeline parallelism",
                sp,
            )
        )
    elif world % sp:
        out.append(
            Problem(
                "--sequence-parallel", f"does not divide the world size {world}", sp, fix="pick a divisor"
            )
        )
    heads, kv_heads = degrees.num_heads, degrees.kv_heads or degrees.num_heads
    if heads and heads % sp:
        out.append(
            Problem(
                "--sequence-parallel",
                f"does not divide the model's {heads} attention heads (Ulysses gives each rank heads/sp heads)",
                sp,
                fix="pick a divisor of the head count",
            )
        )
    elif kv_heads and kv_heads % sp and sp % kv_heads:
        out.append(
            Problem(
                "--sequence-parallel",
                f"neither divides nor is a multiple of the model's {kv_heads} key/value heads",
                sp,
            )
        )
    if stage == 3 and _get(config, "zero_optimization.reduce_scatter") is False:
        # Our gradient correction for ZeRO-3 assumes its reduce-scatter path (engine/sequence_parallel.py).
        out.append(
            Problem(
                "zero_optimization.reduce_scatter",
                "must stay true with ZeRO-3 and sequence parallelism (the all-reduce path scales some "
                "gradient buckets differently)",
                False,
                fix="remove the key",
            )
        )
    low_precision = _get(config, "bf16.enabled") is True or _get(config, "fp16.enabled") is True
    bf16_fp32_accumulation = _get(config, "bf16.enabled") is True and _get(
        config, "data_types.grad_accum_dtype"
    ) in ("fp32", "float32")
    if (stage == 0 and low_precision) or (stage == 1 and bf16_fp32_accumulation):
        # DeepSpeed's FP16_Optimizer / BF16_Optimizer sum gradient norms over the "model-parallel" group,
        # which Ulysses aliases to the sequence group, where gradients are replicas: the norm (and clipping)
        # would come out sqrt(sp) too large. ZeRO-1/2/3's own optimizers and fp32 ZeRO-0 count them once.
        out.append(
            Problem(
                "zero_optimization.stage",
                "with bf16/fp16 and sequence parallelism use ZeRO-1, 2 or 3 (and no fp32 grad_accum_dtype at "
                "stage 1): DeepSpeed's mixed-precision wrappers miscount the gradient norm under Ulysses",
                stage,
                fix="use the zero1, zero2 or zero3 preset",
            )
        )
    if _get(config, "zero_optimization.zero_quantized_gradients") is True:
        out.append(
            Problem(
                "zero_optimization.zero_quantized_gradients",
                "is not combined with sequence parallelism (its reduction ignores the sequence groups)",
                True,
            )
        )
    return out


def check_cross(config: dict[str, Any], degrees: Degrees, skip: Iterable[str] = ()) -> list[Problem]:
    """Checks that involve several keys, or keys and the parallel layout. `skip`: paths already reported."""
    skipped = set(skip)
    out: list[Problem] = []
    stage = zero_stage(config)
    world, tp, pp = degrees.world_size, degrees.tensor_parallel, degrees.pipeline_stages
    json_pp = _int(_get(config, "pipeline.stages"))
    if json_pp and json_pp > 1 and pp == 1:
        pp = json_pp
    json_tp = _int(_get(config, "tensor_parallel.autotp_size"))
    if json_tp and json_tp > 1 and tp == 1:
        tp = json_tp

    if world % tp:
        out.append(
            Problem("--tensor-parallel", f"does not divide the world size {world}", tp, fix="pick a divisor")
        )
    elif world % (tp * pp):
        out.append(
            Problem(
                "--pipeline-stages",
                f"tensor_parallel({tp}) x pipeline_stages({pp}) does not divide the world size {world}",
                pp,
                fix="pick a divisor",
            )
        )
    if tp > 1 and world % tp == 0 and degrees.num_heads and degrees.num_heads % tp:
        out.append(
            Problem(
                "tensor_parallel.autotp_size",
                f"does not divide the model's {degrees.num_heads} attention heads",
                tp,
                fix="pick a divisor of the head count",
            )
        )
    if pp > 1 and stage >= 2:
        out.append(
            Problem(
                "zero_optimization.stage",
                "ZeRO-2/3 cannot be combined with pipeline parallelism",
                stage,
                fix="use stage 0 or 1 with a pipeline",
            )
        )
    accum = _int(_get(config, "gradient_accumulation_steps"))
    if pp > 1 and accum is not None and accum < pp:
        out.append(
            Problem(
                "gradient_accumulation_steps",
                f"a pipeline of {pp} stages needs at least {pp} micro-batches per step (here the "
                "accumulation steps); with fewer, stages sit idle",
                accum,
                fix=f"set --grad-accum to >= {pp} (4x stages keeps the bubble small)",
            )
        )
    if tp > 1 and stage >= 3:
        out.append(
            Problem(
                "zero_optimization.stage",
                "AutoTP training supports ZeRO stages 0-2",
                stage,
                fix="use stage 1 or 2 with tensor parallelism",
            )
        )
    out.extend(_sequence_parallel_problems(config, degrees, stage, world, tp, pp))

    opt_dev, param_dev = offload_device(config, "optimizer"), offload_device(config, "param")
    if opt_dev != "none" and stage == 0:
        out.append(
            Problem(
                "zero_optimization.offload_optimizer",
                "optimizer offload needs ZeRO stage 1, 2 or 3",
                opt_dev,
                fix='set zero_optimization.stage >= 1 or device "none"',
            )
        )
    if param_dev != "none" and stage != 3:
        out.append(
            Problem(
                "zero_optimization.offload_param",
                "parameter offload needs ZeRO stage 3",
                param_dev,
                fix='set zero_optimization.stage to 3 or device "none"',
            )
        )
    for what, device in (("optimizer", opt_dev), ("param", param_dev)):
        path = f"zero_optimization.offload_{what}.nvme_path"
        if device == "nvme" and not _get(config, path) and path not in skipped:
            out.append(
                Problem(
                    path,
                    "NVMe offload needs a path on a fast local disk",
                    None,
                    fix=f"--set {path}=/local_nvme",
                )
            )
    zeropp = {
        k: _get(config, f"zero_optimization.{k}")
        for k in ("zero_quantized_weights", "zero_quantized_gradients", "zero_quantized_nontrainable_weights")
    }
    hpz = _int(_get(config, "zero_optimization.zero_hpz_partition_size")) or 1
    for key, on in zeropp.items():
        if on is True and stage != 3:
            out.append(
                Problem(
                    f"zero_optimization.{key}",
                    "ZeRO++ quantization needs ZeRO stage 3",
                    on,
                    fix="set zero_optimization.stage to 3",
                )
            )
    if hpz > 1:
        if stage != 3:
            out.append(Problem("zero_optimization.zero_hpz_partition_size", "hpZ needs ZeRO stage 3", hpz))
        elif world % hpz:
            out.append(
                Problem(
                    "zero_optimization.zero_hpz_partition_size",
                    f"does not divide the world size {world}",
                    hpz,
                    fix="use the GPUs per node (a secondary partition within each node)",
                )
            )

    if (
        _get(config, "fp16.enabled") is True
        and _get(config, "bf16.enabled") is True
        and "fp16.enabled" not in skipped
    ):
        out.append(Problem("fp16.enabled", "bf16 and fp16 are both enabled", True, fix="enable one"))
    total = _int(_get(config, "scheduler.params.total_num_steps"))
    warm = _int(_get(config, "scheduler.params.warmup_num_steps"))
    if total is not None and warm is not None and warm > total:
        out.append(Problem("scheduler.params.warmup_num_steps", f"exceeds total_num_steps ({total})", warm))
    ac = _get(config, "activation_checkpointing")
    if (
        isinstance(ac, dict)
        and ac.get("cpu_checkpointing") is True
        and ac.get("partition_activations") is not True
    ):
        out.append(
            Problem(
                "activation_checkpointing.cpu_checkpointing",
                "only takes effect with partition_activations",
                True,
                fix="set activation_checkpointing.partition_activations to true",
            )
        )
    return [p for p in out if p.path not in skipped]
