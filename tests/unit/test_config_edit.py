"""`scaling config set` keeps formatting; `scaling config diff` compares meaning, not text."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from scaling.cli.main import cli
from scaling.config.deepspeed import PRESET_DIR
from scaling.config.edit import diff, set_in_text


def test_set_changes_only_the_value_and_keeps_layout(tmp_path: Path) -> None:
    path = tmp_path / "zero2.json"
    shutil.copy(PRESET_DIR / "zero2.json", path)
    before = path.read_text()
    result = CliRunner().invoke(
        cli, ["config", "set", str(path), "zero_optimization.stage=3", "bf16.enabled=true"]
    )
    assert result.exit_code == 0, result.output
    assert "zero_optimization.stage: 2 -> 3" in result.output
    after = path.read_text()
    expected = before.replace('"stage": 2', '"stage": 3').replace(
        '"bf16": {\n    "enabled": "auto"', '"bf16": {\n    "enabled": true'
    )
    assert after == expected


def test_set_inserts_new_keys_in_the_siblings_style(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(
        '{\n    "zero_optimization": {\n        "stage": 2\n    },\n    "bf16": {"enabled": true}\n}\n'
    )
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "config",
            "set",
            str(path),
            "zero_optimization.offload_optimizer.device=cpu",
            "bf16.immediate_grad_update=false",
            "steps_per_print=50",
        ],
    )
    assert result.exit_code == 0, result.output
    assert path.read_text() == (
        "{\n"
        '    "zero_optimization": {\n'
        '        "stage": 2,\n'
        '        "offload_optimizer": {\n'
        '            "device": "cpu"\n'
        "        }\n"
        "    },\n"
        '    "bf16": {"enabled": true, "immediate_grad_update": false},\n'
        '    "steps_per_print": 50\n'
        "}\n"
    )
    # Round trip: setting the old values back changes nothing else.
    result = runner.invoke(cli, ["config", "set", str(path), "steps_per_print=50"])
    assert result.exit_code == 0
    assert json.loads(path.read_text())["steps_per_print"] == 50


def test_set_round_trip_restores_the_exact_text(tmp_path: Path) -> None:
    path = tmp_path / "zero0.json"
    shutil.copy(PRESET_DIR / "zero0.json", path)  # a one-line-per-section layout
    original = path.read_text()
    runner = CliRunner()
    assert runner.invoke(cli, ["config", "set", str(path), "fp16.hysteresis=4"]).exit_code == 0
    assert '"hysteresis": 4, "min_loss_scale": 1}' in path.read_text()
    assert runner.invoke(cli, ["config", "set", str(path), "fp16.hysteresis=2"]).exit_code == 0
    assert path.read_text() == original


def test_set_refuses_broken_input_and_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text('{"a": 1, "a": 2}')
    result = CliRunner().invoke(cli, ["config", "set", str(path), "a=3"])
    assert result.exit_code == 2
    assert "duplicate key" in result.output
    assert path.read_text() == '{"a": 1, "a": 2}'
    path.write_text('{"a": 1}')
    result = CliRunner().invoke(cli, ["config", "set", str(path), "a.b=3"])
    assert result.exit_code == 2
    assert "a: is not a JSON object" in result.output
    assert path.read_text() == '{"a": 1}'


def test_set_in_text_into_empty_and_nested_objects() -> None:
    assert set_in_text('{"a": {}}', "a.b", 1) == '{"a": {"b": 1}}'
    assert set_in_text('{\n  "a": {}\n}', "a.b", 1) == '{\n  "a": {\n    "b": 1\n  }\n}'
    assert set_in_text('{"a": [1, 2], "b": "x"}', "b", None) == '{"a": [1, 2], "b": null}'


def test_diff_is_semantic() -> None:
    a = {"train_batch_size": 8, "zero_optimization": {"stage": 2, "overlap_comm": True}, "x": 1}
    b = {"zero_optimization": {"overlap_comm": True, "stage": 3}, "train_batch_size": 8.0, "y": [1]}
    rendered = [c.render() for c in diff(a, b)]
    assert rendered == ["~ zero_optimization.stage: 2 -> 3", "- x = 1", "+ y = [1]"]
    assert diff({"a": True}, {"a": 1})[0].kind == "changed"  # true is not 1 in a config


def test_diff_cli_on_files_and_presets(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    data = json.loads((PRESET_DIR / "zero2.json").read_text())
    path.write_text(json.dumps(dict(reversed(list(data.items()))), indent=8))  # other order and indent
    runner = CliRunner()
    same = runner.invoke(cli, ["config", "diff", "zero2", str(path)])
    assert same.exit_code == 0
    assert same.output.strip() == "no differences"
    other = runner.invoke(cli, ["config", "diff", "zero2", "zero2_offload"])
    assert other.exit_code == 1
    assert '+ zero_optimization.offload_optimizer = {"device": "cpu", "pin_memory": false}' in other.output
    assert "- zero_optimization.overlap_comm = true" in other.output
