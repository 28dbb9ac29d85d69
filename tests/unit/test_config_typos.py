"""One-key misspellings of the real corpus files are refused, naming the key and suggesting the right one."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scaling.config.keys import is_comment, top_spec
from scaling.config.schema import check_schema

CORPUS = Path(__file__).parents[1] / "fixtures" / "ds" / "corpus"
VERDICTS = json.loads((CORPUS.parent / "corpus_verdicts.json").read_text(encoding="utf-8"))["verdicts"]
# Free-form below these: optimizer/scheduler params (checked per type, below their section), autotuning's
# mapping of DeepSpeed keys to script arguments, and the keys DeepSpeed ignores wholesale.
OPAQUE = {"params", "arg_mappings", "comms_config", "monitor_config"}


def _paths(node: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in node.items():
        if is_comment(key):
            continue
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


def _misspell(word: str, how: int) -> str:
    mid = max(1, len(word) // 2)
    if how == 0:
        return word[:mid] + word[mid + 1 :]  # a dropped letter
    if how == 1:
        return word[: mid - 1] + word[mid] + word[mid - 1] + word[mid + 1 :]  # two letters swapped
    return word[:mid] + word[mid - 1] + word[mid:]  # a doubled letter


def _siblings(config: dict[str, Any], path: tuple[str, ...]) -> set[str]:
    node: Any = config
    for part in path[:-1]:
        node = node[part]
    return set(node)


def _typo_cases() -> Iterator[tuple[str, tuple[str, ...], str]]:
    known = set(top_spec())
    for name, verdict in sorted(VERDICTS.items()):
        if not verdict["accepted"]:
            continue
        config = json.loads((CORPUS / name).read_text(encoding="utf-8"))
        for path in _paths(config):
            if OPAQUE & set(path[:-1]) and path[0] not in ("optimizer", "scheduler"):
                continue
            for how in range(3):
                typo = _misspell(path[-1], how)
                if typo == path[-1] or typo in known or typo in _siblings(config, path):
                    continue
                yield name, path, typo


def _with_typo(config: dict[str, Any], path: tuple[str, ...], typo: str) -> dict[str, Any]:
    out = copy.deepcopy(config)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[typo] = node.pop(path[-1])
    return out


def test_at_least_99_percent_of_one_key_misspellings_are_refused_with_the_right_suggestion() -> None:
    total, caught, missed = 0, 0, []
    configs = {n: json.loads((CORPUS / n).read_text(encoding="utf-8")) for n in VERDICTS}
    for name, path, typo in _typo_cases():
        total += 1
        problems, _ = check_schema(_with_typo(configs[name], path, typo))
        where = ".".join((*path[:-1], typo))
        if any(p.path == where and f"did you mean {path[-1]!r}" in p.render() for p in problems):
            caught += 1
        else:
            missed.append(f"{name}: {where}")
    print(f"typo corpus: {caught}/{total} refused with the right suggestion")
    assert total >= 500
    assert caught / total >= 0.99, (
        f"{caught}/{total}; missed: {sorted(set(m.split(': ')[1] for m in missed))}"
    )
