"""`"auto"` left in DeepSpeed's pydantic-modelled sections after the HF Trainer's rules have run.

`DeepSpeedConfigModel` drops every `"auto"` value before validation, so the field keeps DeepSpeed's default
(this is how `stage3_gather_16bit_weights_on_model_save: "auto"` works in HF/accelerate files). The resolved
config spells that default out, so `scaling config explain` can show it.
"""

from __future__ import annotations

from typing import Any

from scaling.config.deepspeed_models import model_fields_spec

AUTO = "auto"
SOURCE = "DeepSpeed default (filled 'auto')"


def fill_model_autos(config: dict[str, Any], sources: dict[str, str]) -> None:
    """Replace each remaining "auto" in a modelled section by the field's default (or drop it, like DeepSpeed,
    where the default is not a JSON value)."""
    for section, fields in model_fields_spec().items():
        node = config.get(section)
        if isinstance(node, dict):
            _fill(node, fields, section, sources)


def _fill(
    node: dict[str, Any], fields: dict[str, dict[str, Any]], prefix: str, sources: dict[str, str]
) -> None:
    by_name = {**fields, **{spec["alias"]: spec for spec in fields.values() if "alias" in spec}}
    for key in list(node):
        spec = by_name.get(key)
        if spec is None:
            continue
        path = f"{prefix}.{key}"
        value = node[key]
        if isinstance(value, dict) and "children" in spec:
            _fill(value, spec["children"], path, sources)
        elif value == AUTO and isinstance(value, str):
            default = spec.get("default")
            if default is None:
                del node[key]
                sources.pop(path, None)
            else:
                node[key] = default
                sources[path] = SOURCE
