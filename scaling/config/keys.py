"""The keys of DeepSpeed JSON: DeepSpeed's pydantic-modelled sections (from its own models, via
`deepspeed_models`) and hand-written rules where DeepSpeed has no model (top-level scalars, optimizer and
scheduler params per type, plain-class sections such as activation_checkpointing and aio).

Key names follow DeepSpeed 0.19.8's sources (runtime/constants.py, runtime/lr_schedules.py, profiling/constants.py,
runtime/swap_tensor/constants.py, runtime/activation_checkpointing/config.py, autotuning/constants.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

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


def obj(children: dict[str, Key] | None = None, **kw: Any) -> Key:
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

HAND_WRITTEN_TOP: dict[str, Key] = {
    # Upper bounds far beyond any real run: a value past them is a typo (an extra digit, a token count) that
    # DeepSpeed would only meet as an out-of-memory error or a data loader that never fills a step.
    "train_batch_size": Key("int", auto=True, minimum=1, maximum=2**24),
    "train_micro_batch_size_per_gpu": Key("int", auto=True, minimum=1, maximum=2**20),
    "gradient_accumulation_steps": Key("int", auto=True, minimum=1, maximum=2**20),
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
    "optimizer": obj({"type": S, "params": obj(None), "legacy_fusion": B}),
    "scheduler": obj({"type": Key("str", choices=tuple(SCHEDULER_PARAMS)), "params": obj(None)}),
    "torch_autocast": obj({"enabled": B, "dtype": DTYPE, "lower_precision_safe_modules": Key("list")}),
    "data_types": obj(
        {"grad_accum_dtype": DTYPE, "param_dtype": DTYPE, "buffer_dtype": DTYPE, "keep_in_fp32_modules": ANY}
    ),
    "activation_checkpointing": obj(
        {
            "partition_activations": B,
            "contiguous_memory_optimization": B,
            "cpu_checkpointing": B,
            "number_checkpoints": Key("int", minimum=1, nullable=True),
            "synchronize_checkpoint_boundary": B,
            "profile": B,
        }
    ),
    "pipeline": obj(
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
    "flops_profiler": obj(
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
    "checkpoint": obj(
        {
            "tag_validation": Key(
                "str", choices=("Ignore", "Warn", "Fail", "IGNORE", "WARN", "FAIL", "ignore", "warn", "fail")
            ),
            "load_universal": B,
            "use_node_local_storage": B,
            "parallel_write": obj({"pipeline_stage": B}),
            "checkpoint_serialization": B,
            "writer": obj(None),
        }
    ),
    "aio": obj(
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
    "timers": obj(None),
    # deepspeed/autotuning/constants.py (a plain class: DeepSpeed ignores misspelt keys here).
    "autotuning": obj(
        {
            **dict.fromkeys(("enabled", "fast", "overwrite", "tuner_early_stopping"), ANY),
            **dict.fromkeys(("results_dir", "exps_dir", "metric_path", "model_info_path", "tuner_type"), ANY),
            **dict.fromkeys(("start_profile_step", "end_profile_step", "tuner_num_trials", "mp_size"), ANY),
            **dict.fromkeys(("max_train_batch_size", "min_train_batch_size", "metric"), ANY),
            **dict.fromkeys(
                ("max_train_micro_batch_size_per_gpu", "min_train_micro_batch_size_per_gpu"), ANY
            ),
            "num_tuning_micro_batch_sizes": ANY,
            "arg_mappings": obj(None),
            "model_info": obj(None),
        }
    ),
    "data_efficiency": obj(None),
    "weight_quantization": obj(None),
    "expert_parallel": obj(None),
    "datastates_ckpt": obj(None),
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

    top = dict(HAND_WRITTEN_TOP)
    for section, fields in model_fields_spec().items():
        top[section] = obj(_section_from_model(fields, section), old="bf16" if section == "bfloat16" else "")
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
