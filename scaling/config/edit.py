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

from scaling.config.deepspeed import load_json, parse_override
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


def set_in_text(text: str, key: str, value: Any) -> str:
    """Return `text` with the dotted `key` set to `value`, changing nothing else."""
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
            return _insert(text, node, part, nested)
        node = node.members[part][1]
    return text[: node.start] + _dump_like(text, node, value) + text[node.end :]


def _dump_like(text: str, node: _Node, value: Any) -> str:
    """Serialise `value` for the slot `node` occupies: multi-line objects follow the surrounding indent."""
    if not isinstance(value, dict | list) or not value:
        return json.dumps(value)
    line_start = text.rfind("\n", 0, node.start) + 1
    indent = len(text[line_start : node.start]) - len(text[line_start : node.start].lstrip())
    step = _indent_step(text)
    if step is None:
        return json.dumps(value)
    body = json.dumps(value, indent=step)
    return body.replace("\n", "\n" + " " * indent)


def _indent_step(text: str) -> int | None:
    """The file's indentation step, or None when it is written on one line."""
    widths = [len(line) - len(line.lstrip(" ")) for line in text.splitlines() if line.strip()]
    steps = [w for w in widths if w > 0]
    return min(steps) if steps else None


def _insert(text: str, obj: _Node, key: str, value: Any) -> str:
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
        probe = _Node(last_key_at, last_key_at)
        rendered = _dump_like(text, probe, value) if indent_text else json.dumps(value)
        return text[: last.end] + f"{sep}{json.dumps(key)}: {rendered}" + text[last.end :]
    # An empty object: open it up in the file's style.
    step = _indent_step(text)
    if step is None:
        return text[:close] + f"{json.dumps(key)}: {json.dumps(value)}" + text[close:]
    line_start = text.rfind("\n", 0, obj.start) + 1
    outer = len(text[line_start : obj.start]) - len(text[line_start : obj.start].lstrip())
    pad = " " * (outer + step)
    rendered = (
        json.dumps(value, indent=step).replace("\n", "\n" + pad)
        if isinstance(value, dict)
        else json.dumps(value)
    )
    return text[: obj.start + 1] + f"\n{pad}{json.dumps(key)}: {rendered}\n{' ' * outer}" + text[close:]


def set_keys(path: Path, assignments: list[str]) -> list[tuple[str, Any, Any]]:
    """Apply KEY=VALUE assignments to the JSON file at `path` in place; returns (key, old, new) per change.

    The file must be valid first (duplicate keys too are refused); nothing is written if any assignment fails.
    """
    load_json(path)
    text = path.read_text(encoding="utf-8")
    changes = []
    for item in assignments:
        key, value = parse_override(item)
        old = _lookup(json.loads(text), key)
        text = set_in_text(text, key, value)
        changes.append((key, old, value))
    json.loads(text)  # the edit must leave valid JSON; a bug here must not corrupt the user's file
    path.write_text(text, encoding="utf-8")
    return changes


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
