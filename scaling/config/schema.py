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
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scaling.distributed.topology import SEQUENCE_PARALLEL_RULE, Topology
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

OFFLOAD_DEVICES = ("none", "cpu", "nvme")

_OFFLOAD_PARAM = {
    "device": Key("str", choices=OFFLOAD_DEVICES),
    "nvme_path": Key("str", nullable=True),
    "buffer_count": I1,
    "buffer_size": Key("int", minimum=1),
    "max_in_cpu": I0,
    "pin_memory": B,
}
_OFFLOAD_OPTIMIZER = {
    "device": Key("str", choices=OFFLOAD_DEVICES),
    "nvme_path": Key("str", nullable=True),
    "buffer_count": I1,
    "pin_memory": B,
    "pipeline_read": B,
    "pipeline_write": B,
    "fast_init": B,
    "ratio": Key("number", minimum=0),
    "super_offload": B,
    "cpuadam_cores_perc": Key("number", minimum=0),
}

ZERO = {
    "stage": Key("int", choices=(0, 1, 2, 3)),
    "contiguous_gradients": B,
    "reduce_scatter": B,
    "reduce_bucket_size": Key("int", auto=True, minimum=1),
    "use_multi_rank_bucket_allreduce": B,
    "allgather_partitions": B,
    "allgather_bucket_size": Key("int", minimum=1),
    "overlap_comm": Key("bool", nullable=True),
    "compute_grad_norm": B,
    "load_from_fp32_weights": B,
    "elastic_checkpoint": B,
    "offload_param": _obj(_OFFLOAD_PARAM, nullable=True),
    "offload_optimizer": _obj(_OFFLOAD_OPTIMIZER, nullable=True),
    "zenflow": _obj(None, nullable=True),
    "sub_group_size": Key("int", minimum=1),
    "cpu_offload_param": Key("bool", old="zero_optimization.offload_param"),
    "cpu_offload_use_pin_memory": Key("bool", old="offload_param/offload_optimizer.pin_memory"),
    "cpu_offload": Key("bool", old="zero_optimization.offload_optimizer"),
    "stage3_prefetch_bucket_size": Key("int", auto=True, minimum=0),
    "stage3_param_persistence_threshold": Key("int", auto=True, minimum=0),
    "stage3_model_persistence_threshold": Key("int", minimum=0),
    "stage3_max_live_parameters": Key("int", minimum=0),
    "stage3_max_reuse_distance": Key("int", minimum=0),
    "stage3_gather_16bit_weights_on_model_save": B,
    "stage3_gather_fp16_weights_on_model_save": Key(
        "bool", old="zero_optimization.stage3_gather_16bit_weights_on_model_save"
    ),
    "stage3_module_granularity_threshold": I0,
    "stage3_use_all_reduce_for_fetch_params": B,
    "stage3_allgather_sequential": B,
    "ignore_unused_parameters": B,
    "legacy_stage1": B,
    "round_robin_gradients": B,
    "parameter_alignment": B,
    # ZeRO++: hierarchical partitioning (hpZ), quantized weights (qwZ) and gradients (qgZ).
    "zero_hpz_partition_size": Key("int", auto=True, minimum=1),
    "zero_quantized_weights": B,
    "zero_quantized_nontrainable_weights": B,
    "zero_quantized_gradients": B,
    "memory_efficient_linear": B,
    "pipeline_loading_checkpoint": B,
    "override_module_apply": B,
    "log_trace_cache_warnings": B,
    "enable_sanity_checks": B,
    "save_muon_momentum_buffer_in_memory": B,
    "leaf_module": _obj(None),
}
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
DEEPSPEED_OPTIMIZERS = ("Adam", "AdamW", "Lamb", "Lion", "Adagrad", "Muon", "MuAdam", "MuAdamW", "MuSGD")

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

_MONITOR = {"enabled": B, "output_path": S, "job_name": S}

TOP: dict[str, Key] = {
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
    "zero_optimization": _obj(ZERO),
    "optimizer": _obj({"type": S, "params": _obj(None), "legacy_fusion": B}),
    "scheduler": _obj({"type": Key("str", choices=tuple(SCHEDULER_PARAMS)), "params": _obj(None)}),
    "bf16": _obj(
        {
            "enabled": BA,
            "immediate_grad_update": B,
            "check_grad_overflow": B,
            "bf16_master_weights_and_grads": B,
            "bf16_optimizer_states": B,
        }
    ),
    "bfloat16": _obj({"enabled": BA, "immediate_grad_update": B}, old="bf16"),
    "fp16": _obj(
        {
            "enabled": BA,
            "auto_cast": B,
            "loss_scale": N0,
            "initial_scale_power": I0,
            "loss_scale_window": I1,
            "hysteresis": I1,
            "consecutive_hysteresis": B,
            "min_loss_scale": N0,
            "fp16_master_weights_and_grads": B,
        }
    ),
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
    "tensor_parallel": _obj(
        {
            "autotp_size": Key("int", auto=True, minimum=0),
            "tp_overlap_comm": B,
            "dtype": ANY,
            "vocab_parallel_lm_head": Key("bool", nullable=True),
            "vocab_parallel_ce_backend": Key("str", choices=("torch", "liger")),
            "tp": _obj({"tp_size": I1, "tp_grain_size": I1}),
            "partition_config": _obj(None, nullable=True),
            "preset_model": Key("str", nullable=True),
            "keep_module_on_host": B,
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
    "tensorboard": _obj(_MONITOR),
    "csv_monitor": _obj(_MONITOR),
    "wandb": _obj(
        {"enabled": B, "group": Key("str", nullable=True), "team": Key("str", nullable=True), "project": S}
    ),
    "comet": _obj(
        {
            "enabled": B,
            "samples_log_interval": I1,
            "project": S,
            "workspace": S,
            "api_key": S,
            "experiment_name": S,
            "experiment_key": S,
            "online": B,
            "mode": S,
        }
    ),
    "comms_logger": _obj({"enabled": B, "prof_all": B, "prof_ops": Key("list"), "verbose": B, "debug": B}),
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
    "compile": _obj(None),
    "timers": _obj(None),
    "autotuning": _obj(None),
    "data_efficiency": _obj(None),
    "hybrid_engine": _obj(None),
    "weight_quantization": _obj(None),
    "expert_parallel": _obj(None),
    "datastates_ckpt": _obj(None),
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


@dataclass
class _Checker:
    problems: list[Problem] = field(default_factory=list)
    deprecated: list[Problem] = field(default_factory=list)

    def section(
        self, node: Any, spec: dict[str, Key], prefix: str, removed: dict[str, str] | None = None
    ) -> None:
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            if removed and key in removed:
                self.problems.append(Problem(path, f"no longer supported: {removed[key]}", fix="remove it"))
                continue
            child = spec.get(key)
            if child is None:
                self.problems.append(_unknown(path, key, spec, value))
                continue
            if child.old:
                self.deprecated.append(Problem(path, "deprecated", value, fix=f"use {child.old}"))
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
                self.section(value, spec.children, path)
            return
        if spec.choices and not _in_choices(value, spec):
            hint = _did_you_mean(str(value), [str(c) for c in spec.choices])
            self.problems.append(
                Problem(path, f"must be one of {', '.join(map(str, spec.choices))}", value, fix=hint)
            )
            return
        if spec.minimum is not None and isinstance(value, int | float) and value < spec.minimum:
            self.problems.append(Problem(path, f"must be >= {spec.minimum:g}", value))
        if isinstance(value, float) and not math.isfinite(value):
            self.problems.append(Problem(path, "must be finite", value))


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
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    if not close:
        close = [o for o in options if o.lower() == word.lower()]
    return f"did you mean {close[0]!r}?" if close else ""


def _unknown(path: str, key: str, spec: dict[str, Key], value: Any) -> Problem:
    hint = _did_you_mean(key, spec)
    return Problem(path, "unknown key", value, fix=hint or f"known keys: {', '.join(sorted(spec))}")


def check_schema(config: dict[str, Any]) -> tuple[list[Problem], list[Problem]]:
    """Check key names, types and allowed values at every level.

    Returns (problems, deprecations): problems make the config invalid; deprecations are keys DeepSpeed 0.19.8
    still accepts under an old name, reported as advice.
    """
    c = _Checker()
    c.section(config, TOP, "", REMOVED_TOP)
    _check_optimizer(c, config.get("optimizer"))
    _check_scheduler(c, config.get("scheduler"))
    return c.problems, c.deprecated


def _check_optimizer(c: _Checker, section: Any) -> None:
    if not isinstance(section, dict):
        return
    kind = section.get("type")
    params = section.get("params")
    if kind is None:
        c.problems.append(
            Problem("optimizer.type", "missing", fix=f"one of {', '.join(DEEPSPEED_OPTIMIZERS)}")
        )
        return
    if not isinstance(kind, str) or not isinstance(params, dict):
        return
    spec = OPTIMIZER_PARAMS.get(kind.lower())
    if spec is None:
        if kind.lower() in {o.lower() for o in DEEPSPEED_OPTIMIZERS}:
            return  # a DeepSpeed optimizer whose params we do not model (MuAdam...): accept them as given
        if not kind[:1].isupper():  # torch.optim classes are CamelCase; anything else is a typo
            hint = _did_you_mean(kind, DEEPSPEED_OPTIMIZERS)
            c.problems.append(
                Problem(
                    "optimizer.type",
                    "unknown optimizer",
                    kind,
                    fix=hint or f"one of {', '.join(DEEPSPEED_OPTIMIZERS)} or a torch.optim class",
                )
            )
        return
    c.section(params, spec, "optimizer.params")
    betas = params.get("betas")
    if isinstance(betas, list) and (len(betas) != 2 or not all(_type_ok(b, "number") for b in betas)):
        c.problems.append(Problem("optimizer.params.betas", "expected two numbers [beta1, beta2]", betas))


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
    config: dict[str, Any], model_heads: Heads, stage: int, world: int, tp: int, pp: int, sp: int
) -> list[Problem]:
    json_sp = _int(_get(config, "sequence_parallel_size"))
    if json_sp and json_sp > 1 and sp == 1:
        sp = json_sp
    if sp <= 1:
        return []
    out: list[Problem] = []
    topology = Topology(
        world_size=world, tensor_parallel=tp, pipeline_stages=pp, sequence_parallel=sp, check=False
    )
    if topology.mixes_sequence_with_model_parallel:
        out.append(Problem("--sequence-parallel", SEQUENCE_PARALLEL_RULE, sp))
    elif world % sp:
        out.append(
            Problem(
                "--sequence-parallel", f"does not divide the world size {world}", sp, fix="pick a divisor"
            )
        )
    heads, kv_heads = model_heads.num_heads, model_heads.kv_heads or model_heads.num_heads
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


@dataclass(frozen=True)
class Heads:
    """The model's attention heads, when a model is given: tensor and sequence degrees must divide them."""

    num_heads: int | None = None
    """Attention (query) heads."""
    kv_heads: int | None = None
    """Key/value heads (grouped-query attention); None: as many as num_heads."""


def check_cross(
    config: dict[str, Any], topology: Topology, heads: Heads = Heads(), skip: Iterable[str] = ()
) -> list[Problem]:
    """Checks that involve several keys, or keys and the parallel layout (the options' degrees; where an
    option is 1 the JSON's own degree counts). `skip`: paths already reported."""
    skipped = set(skip)
    out: list[Problem] = []
    stage = zero_stage(config)
    world, tp, pp = topology.world_size, topology.tensor_parallel, topology.pipeline_stages
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
    if tp > 1 and world % tp == 0 and heads.num_heads and heads.num_heads % tp:
        out.append(
            Problem(
                "tensor_parallel.autotp_size",
                f"does not divide the model's {heads.num_heads} attention heads",
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
    out.extend(_sequence_parallel_problems(config, heads, stage, world, tp, pp, topology.sequence_parallel))

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
