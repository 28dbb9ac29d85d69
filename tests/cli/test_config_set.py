"""`scaling config set`: validates the edit, refuses bad ones untouched, keeps the file's own spelling."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from scaling.cli.main import cli


def _set(path: Path, *args: str) -> object:
    return CliRunner().invoke(cli, ["config", "set", str(path), *args])


@pytest.mark.parametrize(
    "assignment, words",
    [
        ("zero_optimization.stagee=3", "did you mean 'stage'"),
        ("zero_optimization.stage=banana", "zero_optimization.stage"),
        ("bf16.enabled=1", "write true"),
    ],
)
def test_bad_edit_is_refused_and_the_file_untouched(tmp_path: Path, assignment: str, words: str) -> None:
    path = tmp_path / "ds.json"
    path.write_bytes(b'{"zero_optimization": {"stage": 2}, "bf16": {"enabled": true}}\n')
    before = path.read_bytes()
    result = _set(path, assignment)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert path.read_bytes() == before


def test_force_writes_an_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 2}}\n')
    assert _set(path, "--force", "zero_optimization.stagee=3").exit_code == 0
    assert '"stagee": 3' in path.read_text()


def test_crlf_scientific_notation_and_inline_arrays_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    text = (
        '{\r\n  "zero_optimization": {\r\n    "stage": 2,\r\n    "reduce_bucket_size": 5e8\r\n  },\r\n'
        '  "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.95]}}\r\n}\r\n'
    )
    path.write_bytes(text.encode())
    result = _set(path, "zero_optimization.allgather_bucket_size=2e8", "optimizer.params.eps=1e-6")
    assert result.exit_code == 0, result.output
    out = path.read_bytes().decode()
    assert "\n" not in out.replace("\r\n", "")  # every line ending is still CRLF
    assert '"reduce_bucket_size": 5e8' in out and '"allgather_bucket_size": 2e8' in out
    assert '"eps": 1e-6' in out and '"betas": [0.9, 0.95]' in out


def test_setting_a_list_keeps_it_inline(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(
        '{\n  "optimizer": {\n    "type": "AdamW",\n    "params": {\n      "betas": [0.9, 0.999]\n    }\n  }\n}\n'
    )
    assert _set(path, "optimizer.params.betas=[0.9,0.95]").exit_code == 0
    assert '"betas": [0.9, 0.95]' in path.read_text()


def test_tab_indented_file_keeps_its_tabs(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text('{\n\t"zero_optimization": {\n\t\t"stage": 2\n\t}\n}\n')
    assert _set(path, "zero_optimization.stage=3", "zero_optimization.overlap_comm=true").exit_code == 0
    assert (
        path.read_text() == '{\n\t"zero_optimization": {\n\t\t"stage": 3,\n\t\t"overlap_comm": true\n\t}\n}\n'
    )


def test_non_ascii_text_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text('{"_comment": "réglages été", "wandb": {"enabled": false}}\n', encoding="utf-8")
    assert _set(path, "wandb.project=modèle").exit_code == 0
    out = path.read_text(encoding="utf-8")
    assert '"_comment": "réglages été"' in out and '"project": "modèle"' in out


def test_diff_folds_an_alias_and_its_field_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('{"zero_optimization": {"stage3_max_live_parameters": 100}}')
    b.write_text('{"zero_optimization": {"max_live_parameters": 100}}')
    result = CliRunner().invoke(cli, ["config", "diff", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert "no differences" in result.output


def test_diff_resolved_compares_after_auto_resolution(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('{"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 2}}')
    b.write_text('{"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2}}')
    plain = CliRunner().invoke(cli, ["config", "diff", str(a), str(b)])
    assert plain.exit_code == 1 and "train_micro_batch_size_per_gpu" in plain.output
    resolved = CliRunner().invoke(cli, ["config", "diff", str(a), str(b), "--resolved", "--micro-batch", "4"])
    assert resolved.exit_code == 0, resolved.output


@pytest.mark.parametrize("command", ["validate", "resolve", "explain", "set", "diff"])
def test_invalid_utf8_is_a_clear_error_in_every_command(tmp_path: Path, command: str) -> None:
    path = tmp_path / "ds.json"
    path.write_bytes(b'{"wandb": {"project": "caf\xe9"}}')
    extra = {"set": ["wandb.enabled=true"], "diff": [str(path)]}.get(command, [])
    result = CliRunner().invoke(cli, ["config", command, str(path), *extra])
    assert result.exit_code == 2, result.output
    assert "byte 0xe9 at offset 26" in result.output and "Traceback" not in result.output
