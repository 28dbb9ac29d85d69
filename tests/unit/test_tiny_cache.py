"""The tiny-model cache behind the `tiny_models` fixture: built once, then reused by later sessions."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
from tiny_cache import build_tiny_models


def test_models_are_built_once_then_reused(tmp_path, monkeypatch):
    built: list[str] = []

    def fake_build(kind: str, out: Path) -> Path:
        built.append(kind)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        return out

    monkeypatch.setattr(tiny, "build", fake_build)
    first = build_tiny_models(tmp_path)
    assert built == list(tiny.KINDS)
    assert sorted(first) == sorted(tiny.KINDS) and all((p / "config.json").is_file() for p in first.values())
    root = first["llama"].parent
    assert sorted(p.name for p in root.iterdir()) == sorted(tiny.KINDS)  # no scratch directory left behind

    built.clear()
    assert build_tiny_models(tmp_path) == first  # the next session builds nothing
    assert built == []


def test_an_interrupted_build_leaves_nothing_to_reuse(tmp_path, monkeypatch):
    def failing_build(kind: str, out: Path) -> Path:
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed half-way")

    monkeypatch.setattr(tiny, "build", failing_build)
    with pytest.raises(RuntimeError, match="half-way"):
        build_tiny_models(tmp_path)
    assert list(tmp_path.rglob("config.json")) == []
