"""Real DeepSpeed JSON files from public projects: what DeepSpeed 0.19.8 accepts validates unchanged at world
size 8; what it rejects is refused naming the same key (verdicts: tests/fixtures/ds/record_verdicts.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from scaling.cli.main import cli

CORPUS = Path(__file__).parents[1] / "fixtures" / "ds" / "corpus"
VERDICTS = json.loads((CORPUS.parent / "corpus_verdicts.json").read_text(encoding="utf-8"))["verdicts"]


def _validate(path: Path) -> object:
    return CliRunner().invoke(cli, ["config", "validate", str(path), "--world-size", "8"])


def test_corpus_is_large_and_every_file_has_a_source_and_a_verdict() -> None:
    files = sorted(p.name for p in CORPUS.glob("*.json"))
    sources = (CORPUS / "SOURCES.md").read_text(encoding="utf-8")
    assert len(files) >= 40
    assert files == sorted(VERDICTS)
    assert all(f"| {name} |" in sources for name in files)


@pytest.mark.parametrize("name", sorted(n for n, v in VERDICTS.items() if v["accepted"]))
def test_files_deepspeed_accepts_validate_unchanged(name: str) -> None:
    result = _validate(CORPUS / name)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", sorted(n for n, v in VERDICTS.items() if not v["accepted"]))
def test_files_deepspeed_rejects_are_refused_naming_the_key(name: str) -> None:
    result = _validate(CORPUS / name)
    assert result.exit_code == 2, result.output
    assert f"  - {VERDICTS[name]['key']}" in result.output, result.output
