"""A strict schema of the DeepSpeed JSON keys users actually write, checked in pure Python.

DeepSpeed 0.19.8 validates some sections with pydantic but silently accepts unknown top-level keys, unknown
`activation_checkpointing` keys, `"gradient_clipping": "abc"` and `"stage": "2"`, and checks scheduler and
optimizer params only inside `deepspeed.initialize` (see shared/notes/deepspeed-on-cpu.md §6). This module
catches all of those before anything is launched, without importing deepspeed (~2 s) or torch.

The keys themselves live in `keys` (DeepSpeed's pydantic sections derived from its own models).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scaling.config.keys import (
    ANY,
    AUTO,
    IGNORED_TOP,
    OPTIMIZER_PARAMS,
    REMOVED_TOP,
    REMOVED_ZERO,
    SCHEDULER_PARAMS,
    Key,
    is_comment,
    top_spec,
)
from scaling.distributed.topology import SEQUENCE_PARALLEL_RULE, Topology
from scaling.errors import Problem


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
    if isinstance(eps, int | float) and not isinstance(eps, bool) and eps <= 0:
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
