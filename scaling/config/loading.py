"""Read DeepSpeed JSON files as DeepSpeed reads them, with clear messages for everything that can go wrong.

DeepSpeed's `DeepSpeedConfig(path)` parses a file with hjson, so `//` and `#` comments and trailing commas
work there; the HF Trainer and accelerate read the same file with `json` and refuse them. A file strict JSON
refuses but hjson accepts is loaded, with a notice saying so.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from scaling.errors import ConfigError, Problem


def _preset_dir() -> Path:
    # Package data, so an installed wheel finds the presets without a checkout; wheels install unzipped, so the
    # resource is a real directory (the top-level ds_configs/ of a checkout is a link to it, not a copy).
    return Path(str(resources.files("scaling").joinpath("ds_configs")))


PRESET_DIR = _preset_dir()
DEFAULT_PRESET = "zero2"


@dataclass
class Loaded:
    """A parsed config file and the notices its reading produced."""

    data: dict[str, Any]
    """The parsed JSON object."""
    notes: list[Problem] = field(default_factory=list)
    """Advice that does not block the run (e.g. comments that only DeepSpeed's own loader accepts)."""
    strict_json: bool = True
    """Whether the file is plain JSON (the in-place editor needs that)."""


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def locate(spec: str | None) -> tuple[Path, str]:
    """A preset name or a JSON path -> (file, label used as the source of its values)."""
    name = spec or DEFAULT_PRESET
    path = Path(name)
    if path.suffix == ".json" or path.exists() or "/" in name:
        if not path.is_file():
            raise ConfigError([Problem("--ds-config", "no such file", name)])
        return path, f"file {path}"
    preset = PRESET_DIR / f"{name}.json"
    if not preset.is_file():
        raise ConfigError(
            [
                Problem(
                    "--ds-config",
                    "neither a file nor a preset",
                    name,
                    fix=f"presets: {', '.join(list_presets())}",
                )
            ]
        )
    return preset, f"preset {name}"


def read_text(path: Path) -> str:
    """The file decoded strictly as UTF-8 (a leading BOM is dropped); a bad byte is named with its offset."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError([Problem(str(path), f"cannot read: {err.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            [
                Problem(
                    str(path),
                    f"is not UTF-8 text: byte 0x{raw[err.start]:02x} at offset {err.start} (line {line})",
                    fix="save the file as UTF-8",
                )
            ]
        ) from None
    return text.removeprefix("\ufeff")


def _pairs_hook(duplicates: list[str]) -> Any:
    def pairs(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                duplicates.append(key)
            out[key] = value
        return out

    return pairs


def load_config(path: Path) -> Loaded:
    """Parse a config file strictly (JSON, or what DeepSpeed's hjson loader accepts, with a notice)."""
    text = read_text(path)
    if not text.strip():
        raise ConfigError([Problem(str(path), "is empty", fix="a DeepSpeed config is a JSON object: {...}")])
    duplicates: list[str] = []
    notes: list[Problem] = []
    strict = True
    try:
        data = json.loads(text, object_pairs_hook=_pairs_hook(duplicates))
    except json.JSONDecodeError as err:
        data = _hjson_or_none(text, duplicates)
        if data is None:
            raise ConfigError(
                [Problem(str(path), f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}")]
            ) from None
        strict = False
        notes.append(
            Problem(
                str(path),
                f"is not strict JSON ({err.msg} at line {err.lineno}): DeepSpeed's own loader (hjson) accepts "
                "its comments/trailing commas, but the HF Trainer and accelerate would refuse the file",
                fix="remove comments and trailing commas to use it there too",
            )
        )
    if not isinstance(data, dict):
        raise ConfigError(
            [
                Problem(
                    str(path),
                    "a DeepSpeed config must be a JSON object",
                    _json_kind(data),
                    fix="wrap it in {...}",
                )
            ]
        )
    if duplicates:
        problems = _duplicate_problems(text, path) if strict else []
        raise ConfigError(
            problems
            or [
                Problem(key, f"duplicate key in {path} (the last one would silently win)")
                for key in duplicates
            ]
        )
    return Loaded(data, notes, strict)


def load_json(path: Path) -> dict[str, Any]:
    """The parsed object of a config file (see `load_config`)."""
    return load_config(path).data


def _hjson_or_none(text: str, duplicates: list[str]) -> Any:
    import hjson  # deferred: only files strict JSON refuses need it

    try:
        return hjson.loads(text, object_pairs_hook=_pairs_hook(duplicates))
    except hjson.HjsonDecodeError:
        return None


def _duplicate_problems(text: str, path: Path) -> list[Problem]:
    from scaling.config.edit import duplicate_keys  # deferred: edit imports this module

    return [
        Problem(key, f"duplicate key in {path} (the last one would silently win)", value)
        for key, value in duplicate_keys(text)
    ]


def _json_kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
