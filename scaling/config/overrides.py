"""`--set KEY=VALUE` edits of a DeepSpeed JSON: parsing them, and applying them with their provenance."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from scaling.errors import ConfigError, Problem


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b.c=VALUE`: VALUE is JSON when it parses (numbers, true, null, lists), else a plain string."""
    if "=" not in item:
        raise ConfigError([Problem("--set", "expected KEY=VALUE with a dotted KEY", item)])
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError([Problem("--set", "empty key segment", item)])
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def apply_overrides(config: dict[str, Any], overrides: Iterable[str], sources: dict[str, str]) -> None:
    for item in overrides:
        key, value = parse_override(item)
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
        for stale in [k for k in sources if k == key or k.startswith(key + ".")]:
            del sources[stale]
        for leaf in leaf_paths(value, key):
            sources[leaf] = f"--set {item}"


def leaf_paths(value: Any, prefix: str) -> Iterable[str]:
    """Dotted paths of the leaves of `value` (a dict is a leaf only when empty), under `prefix`."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from leaf_paths(v, f"{prefix}.{k}")
    else:
        yield prefix
