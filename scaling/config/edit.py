"""Edit JSON files in place without reformatting them, and compare two configs semantically.

`set_keys` rewrites only the characters of the values it changes (or inserts a member next to its siblings
with their indentation), so comments-free hand-formatted files such as `{"enabled": "auto"}` one-liners keep
their layout, key order and indentation; `git diff` shows just the edit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.config.keys import canonical_path
from scaling.config.loading import load_config, read_text
from scaling.config.overrides import parse_override
from scaling.config.schema import check_schema
from scaling.errors import ConfigError, Problem

_WS = re.compile(r"[ \t\r\n]*")


@dataclass
class _Node:
    """Where one JSON value sits in the text."""

    start: int
    """Offset of its first character."""
    end: int
    """Offset just past its last character."""
    members: dict[str, tuple[int, _Node]] = field(default_factory=dict)
    """For objects: key -> (offset of the key's opening quote, value node)."""


class _Spans:
    """A recursive-descent scan of valid JSON that records the text span of every value."""

    def __init__(self, text: str):
        self.text = text
        self.decoder = json.JSONDecoder()
        self.duplicates: list[tuple[str, Any]] = []
        """(dotted path, value) of every key that appears twice in one object, in file order."""

    def ws(self, i: int) -> int:
        return _WS.match(self.text, i).end()  # type: ignore[union-attr]

    def value(self, i: int, path: str = "") -> _Node:
        i = self.ws(i)
        ch = self.text[i]
        if ch == "{":
            node = _Node(i, i)
            j = self.ws(i + 1)
            if self.text[j] == "}":
                node.end = j + 1
                return node
            while True:
                key, after = self.decoder.raw_decode(self.text, j)
                k = self.ws(after)
                assert self.text[k] == ":"
                child_path = f"{path}.{key}" if path else key
                child = self.value(k + 1, child_path)
                if key in node.members:
                    self.duplicates.append((child_path, json.loads(self.text[child.start : child.end])))
                node.members[key] = (j, child)
                j = self.ws(child.end)
                if self.text[j] == "}":
                    node.end = j + 1
                    return node
                j = self.ws(j + 1)  # past the comma
        if ch == "[":
            j = self.ws(i + 1)
            if self.text[j] == "]":
                return _Node(i, j + 1)
            index = 0
            while True:
                child = self.value(j, f"{path}[{index}]")
                index += 1
                j = self.ws(child.end)
                if self.text[j] == "]":
                    return _Node(i, j + 1)
                j = self.ws(j + 1)
        _, end = self.decoder.raw_decode(self.text, i)
        return _Node(i, end)


def duplicate_keys(text: str) -> list[tuple[str, Any]]:
    """(full dotted path, value) of each repeated key in valid JSON `text`."""
    spans = _Spans(text)
    spans.value(0)
    return spans.duplicates


def set_in_text(text: str, key: str, value: Any, spelling: str | None = None) -> str:
    """Return `text` with the dotted `key` set to `value`, changing nothing else. `spelling`: the value's JSON
    text as the user typed it (`5e8` stays `5e8`), used for a scalar."""
    root = _Spans(text).value(0)
    parts = key.split(".")
    node = root
    for depth, part in enumerate(parts):
        if text[node.start] != "{":
            raise ConfigError(
                [
                    Problem(
                        ".".join(parts[:depth]), "is not a JSON object, cannot set a key inside it", fix=key
                    )
                ]
            )
        if part not in node.members:
            nested: Any = value
            for inner in reversed(parts[depth + 1 :]):
                nested = {inner: nested}
            if spelling is not None and depth == len(parts) - 1:
                return _insert(text, node, part, value, spelling)
            return _insert(text, node, part, nested)
        node = node.members[part][1]
    rendered = spelling if spelling is not None else _dump_like(text, node, value)
    return text[: node.start] + rendered + text[node.end :]


def _dumps(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=False)


def _dump_like(text: str, node: _Node, value: Any) -> str:
    """Serialise `value` for the slot `node` occupies: multi-line objects follow the surrounding indent."""
    if not isinstance(value, dict) or not value or "\n" not in text[node.start : node.end]:
        return _dumps(value)  # scalars, lists and one-line objects stay on one line
    line_start = text.rfind("\n", 0, node.start) + 1
    indent = len(text[line_start : node.start]) - len(text[line_start : node.start].lstrip())
    step = _indent_step(text)
    if step is None:
        return _dumps(value)
    body = _dumps(value, indent=step)
    return body.replace("\n", "\n" + " " * indent)


def _indent_step(text: str) -> int | None:
    """The file's indentation step, or None when it is written on one line."""
    widths = [len(line) - len(line.lstrip(" ")) for line in text.splitlines() if line.strip()]
    steps = [w for w in widths if w > 0]
    return min(steps) if steps else None


def _insert(text: str, obj: _Node, key: str, value: Any, spelling: str | None = None) -> str:
    close = obj.end - 1  # the object's closing brace
    if obj.members:
        last_key_at, last = list(obj.members.values())[-1]
        line_start = text.rfind("\n", 0, last_key_at) + 1
        prefix = text[line_start:last_key_at]
        if text.rfind("\n", obj.start, last_key_at) == -1 or prefix.strip():
            sep = ", "  # the members share a line: keep it that way
            indent_text = ""
        else:
            sep = ",\n" + prefix
            indent_text = prefix
        rendered = spelling or _dumps(value)
        if indent_text and isinstance(value, dict) and value and _indent_step(text):
            width = len(indent_text.expandtabs())
            rendered = _dumps(value, indent=_indent_step(text)).replace("\n", "\n" + " " * width)
        return text[: last.end] + f"{sep}{_dumps(key)}: {rendered}" + text[last.end :]
    # An empty object: open it up in the file's style.
    step = _indent_step(text)
    if step is None:
        return text[:close] + f"{_dumps(key)}: {spelling or _dumps(value)}" + text[close:]
    line_start = text.rfind("\n", 0, obj.start) + 1
    outer = len(text[line_start : obj.start]) - len(text[line_start : obj.start].lstrip())
    pad = " " * (outer + step)
    rendered = (
        _dumps(value, indent=step).replace("\n", "\n" + pad)
        if isinstance(value, dict)
        else spelling or _dumps(value)
    )
    return text[: obj.start + 1] + f"\n{pad}{_dumps(key)}: {rendered}\n{' ' * outer}" + text[close:]


def set_keys(path: Path, assignments: list[str], force: bool = False) -> list[tuple[str, Any, Any]]:
    """Apply KEY=VALUE assignments to the JSON file at `path` in place; returns (key, old, new) per change.

    The file must be valid JSON first (duplicate keys too are refused). The edited config is checked against
    the schema: an unknown key or a wrong type at an edited key refuses the edit unless `force`. Nothing is
    written when anything fails. Line endings, untouched text, number spelling and non-ASCII text are kept.
    """
    if not load_config(path).strict_json:
        raise ConfigError(
            [Problem(str(path), "has comments or trailing commas; `config set` edits plain JSON only")]
        )
    original = read_text(path)
    crlf = "\r\n" in original
    text = original.replace("\r\n", "\n") if crlf else original
    changes = []
    for item in assignments:
        key, value = parse_override(item)
        raw = item.split("=", 1)[1].strip()
        spelling = raw if _is_json_scalar(raw) else None
        old = _lookup(json.loads(text), key)
        text = set_in_text(text, key, value, spelling)
        changes.append((key, old, value))
    data = json.loads(text)  # the edit must leave valid JSON; a bug here must not corrupt the user's file
    if not force:
        edited = [key for key, _, _ in changes]
        problems = [
            p
            for p in check_schema(data)[0]
            if any(p.path == k or p.path.startswith(k + ".") or k.startswith(p.path + ".") for k in edited)
        ]
        if problems:
            raise ConfigError(
                problems, header=f"not written: {path} would be invalid (--force writes it anyway)"
            )
    if crlf:
        text = text.replace("\n", "\r\n")
    path.write_bytes(text.encode("utf-8"))
    return changes


def _is_json_scalar(raw: str) -> bool:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return False
    return not isinstance(value, dict | list)


def _lookup(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


# -- diff ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One semantic difference between two configs."""

    path: str
    """Dotted key path."""
    kind: str
    """added, removed or changed."""
    old: Any = None
    """Value in the first config (None when added)."""
    new: Any = None
    """Value in the second config (None when removed)."""

    def render(self) -> str:
        if self.kind == "added":
            return f"+ {self.path} = {json.dumps(self.new)}"
        if self.kind == "removed":
            return f"- {self.path} = {json.dumps(self.old)}"
        return f"~ {self.path}: {json.dumps(self.old)} -> {json.dumps(self.new)}"


def fold_aliases(config: Any, prefix: str = "") -> Any:
    """The config with every key under DeepSpeed's field name (`stage3_max_live_parameters` ->
    `max_live_parameters`), so two spellings of one field compare equal."""
    if not isinstance(config, dict):
        return config
    out = {}
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else key
        name = canonical_path(path).rsplit(".", 1)[-1]
        out[name] = fold_aliases(value, path)
    return out


def diff(a: Any, b: Any, prefix: str = "") -> list[Change]:
    """Differences by key path: key order and formatting do not count; 1 and 1.0 are equal, true and 1 not."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[Change] = []
        for key in list(a) + [k for k in b if k not in a]:
            path = f"{prefix}.{key}" if prefix else key
            if key not in b:
                out.append(Change(path, "removed", old=a[key]))
            elif key not in a:
                out.append(Change(path, "added", new=b[key]))
            else:
                out.extend(diff(a[key], b[key], path))
        return out
    if _equal(a, b):
        return []
    return [Change(prefix or "(root)", "changed", old=a, new=b)]


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
