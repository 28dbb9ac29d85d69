"""The one place that reads DeepSpeed's pydantic config models (internal classes of DeepSpeed).

DeepSpeed validates some sections of its JSON with pydantic models (`DeepSpeedConfigModel`, `extra="forbid"`,
`populate_by_name=True`): for those, the key names, aliases, deprecated names, types and bounds are DeepSpeed's
own, and copying them by hand drifts with every release. `derive()` turns the installed models into plain
JSON-able field descriptions; `model_fields_spec()` returns them, from a snapshot written by `derive()` for
the DeepSpeed version it was taken from (so `scaling config validate` stays free of the ~2-5 s deepspeed and
torch import), or derived live when the installed DeepSpeed is another version.

The drift test (tests/unit/test_config_ds_models.py) compares the snapshot with a live `derive()`;
regenerate it with `python -m scaling.config.deepspeed_models`.
"""

from __future__ import annotations

import enum
import functools
import importlib
import json
import math
import types
import typing
from importlib import metadata
from pathlib import Path
from typing import Any

SNAPSHOT = Path(__file__).with_name("deepspeed_models.json")

# JSON section -> (module, class). Only sections DeepSpeed builds from one pydantic model; the monitor model
# spreads over four top-level keys, each its own sub-model.
SECTIONS: dict[str, tuple[str, str]] = {
    "zero_optimization": ("deepspeed.runtime.zero.config", "DeepSpeedZeroConfig"),
    "bf16": ("deepspeed.runtime.precision_config", "DeepSpeedBF16Config"),
    "bfloat16": ("deepspeed.runtime.precision_config", "DeepSpeedBF16Config"),
    "fp16": ("deepspeed.runtime.precision_config", "DeepSpeedFP16Config"),
    "tensorboard": ("deepspeed.monitor.config", "TensorBoardConfig"),
    "wandb": ("deepspeed.monitor.config", "WandbConfig"),
    "csv_monitor": ("deepspeed.monitor.config", "CSVConfig"),
    "comet": ("deepspeed.monitor.config", "CometConfig"),
    "comms_logger": ("deepspeed.comm.config", "CommsLoggerConfig"),
    "tensor_parallel": ("deepspeed.runtime.tensor_parallel.config", "TPTrainingConfig"),
    "compile": ("deepspeed.compile.config", "CompileConfig"),
    "hybrid_engine": ("deepspeed.runtime.config", "HybridEngineConfig"),
}


def installed_version() -> str | None:
    try:
        return metadata.version("deepspeed")
    except metadata.PackageNotFoundError:
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple) and all(isinstance(v, bool | int | float | str) for v in value):
        return list(value)
    if isinstance(value, dict) and not value:
        return {}
    return None  # a default JSON cannot spell (a model instance, a path, a torch dtype): none shown


def _describe(annotation: Any) -> dict[str, Any]:
    """A JSON-able type description: kind, nullable, choices, children (nested model)."""
    from pydantic import BaseModel

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            out = _describe(args[0])
        else:
            kinds = {_describe(a)["kind"] for a in args}
            out = {"kind": kinds.pop() if len(kinds) == 1 else "any"}
        return {**out, "nullable": nullable or out.get("nullable", False)}
    if origin is typing.Literal:
        values = list(typing.get_args(annotation))
        return {"kind": _kind_of_values(values), "choices": values}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = [m.value for m in annotation]
        return {"kind": _kind_of_values(values), "choices": sorted(set(values), key=values.index)}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {"kind": "obj", "children": model_fields(annotation)}
    if origin in (list, tuple, set) or annotation in (list, tuple, set):
        return {"kind": "list"}
    if origin is dict or annotation is dict:
        return {"kind": "obj"}
    simple = {bool: "bool", int: "int", float: "number", str: "str", Path: "str"}
    return {"kind": simple.get(annotation, "any")}


def _kind_of_values(values: list[Any]) -> str:
    if all(isinstance(v, bool) for v in values):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "int"
    if all(isinstance(v, str) for v in values):
        return "str"
    return "any"


def model_fields(model: Any) -> dict[str, dict[str, Any]]:
    """Field name -> description of one pydantic model (aliases, deprecation, type, bounds, default)."""
    out: dict[str, dict[str, Any]] = {}
    for name, info in model.model_fields.items():
        spec = _describe(info.annotation)
        for item in info.metadata:
            for attr, key in (("ge", "minimum"), ("gt", "exclusive_minimum"), ("le", "maximum")):
                bound = getattr(item, attr, None)
                if bound is not None:
                    spec[key] = bound
        if info.alias and info.alias != name:
            spec["alias"] = info.alias
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("deprecated"):
            spec["deprecated"] = True
            spec["new_param"] = str(extra.get("new_param") or "")
            spec["deprecated_msg"] = str(extra.get("deprecated_msg") or "")
        if not info.is_required():
            default = info.get_default(call_default_factory=False)
            spec["default"] = _jsonable(default)
        out[name] = spec
    return out


def derive() -> dict[str, Any]:
    """Describe every modelled section from the installed DeepSpeed (imports deepspeed and torch)."""
    sections = {}
    for section, (module, cls) in SECTIONS.items():
        sections[section] = model_fields(getattr(importlib.import_module(module), cls))
    optimizers = importlib.import_module("deepspeed.runtime.config").DEEPSPEED_OPTIMIZERS
    return {"deepspeed": installed_version(), "sections": sections, "optimizers": list(optimizers)}


@functools.cache
def _current() -> dict[str, Any]:
    if SNAPSHOT.is_file():
        snapshot = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
        if snapshot["deepspeed"] == installed_version():
            return snapshot
    return derive()


def model_fields_spec() -> dict[str, dict[str, dict[str, Any]]]:
    """Section -> field descriptions for the installed DeepSpeed: the snapshot when it matches the installed
    version (no deepspeed import), else a live derivation."""
    return _current()["sections"]


def optimizer_names() -> list[str]:
    """DeepSpeed's own optimizer names (lower case; `type` is compared case-insensitively)."""
    return _current()["optimizers"]


def clear_cache() -> None:
    """Forget the loaded description (after the installed DeepSpeed changed within one process)."""
    _current.cache_clear()


def write_snapshot() -> None:
    SNAPSHOT.write_text(json.dumps(derive(), indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_snapshot()
