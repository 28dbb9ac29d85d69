"""`scaling tokenizer train` and `scaling preprocess` through Click, including bad input -> exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from scaling.cli.main import cli

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_tokenizer_train_then_preprocess(tmp_path):
    from transformers import AutoTokenizer

    runner = CliRunner()
    tok_dir = tmp_path / "tok"
    result = runner.invoke(
        cli,
        [
            "tokenizer",
            "train",
            "--data",
            str(SHARED / "tinyshakespeare.txt"),
            "--vocab-size",
            "400",
            "--model-type",
            "bpe",
            "--output",
            str(tok_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert len(tok) == 400 and tok.mask_token == "<mask>" and tok.pad_token_id == 0
    result = runner.invoke(
        cli,
        [
            "preprocess",
            "--data",
            f"{SHARED / 'sst2' / 'dev.tsv'}:sentence",
            "--tokenizer",
            str(tok_dir),
            "--seq-len",
            "32",
            "--output",
            str(tmp_path / "p"),
            "--workers",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["docs"] == 872 and manifest["seq_len"] == 32 and manifest["blocks"] > 0


def test_bad_input_exits_2_naming_the_source(tmp_path):
    runner = CliRunner()
    missing = tmp_path / "missing.txt"
    result = runner.invoke(
        cli,
        [
            "tokenizer",
            "train",
            "--data",
            str(missing),
            "--vocab-size",
            "100",
            "--output",
            str(tmp_path / "t"),
        ],
    )
    assert result.exit_code == 2 and "missing.txt" in result.output
    (tmp_path / "empty.txt").write_text("\n\n")
    result = runner.invoke(
        cli,
        [
            "preprocess",
            "--data",
            str(tmp_path / "empty.txt"),
            "--tokenizer",
            str(tmp_path / "nope"),
            "--seq-len",
            "32",
            "--output",
            str(tmp_path / "p"),
        ],
    )
    assert result.exit_code == 2 and "nope" in result.output
    result = runner.invoke(
        cli,
        [
            "tokenizer",
            "train",
            "--data",
            str(SHARED / "tinyshakespeare.txt"),
            "--model-type",
            "wordpiece",
            "--output",
            str(tmp_path / "t"),
        ],
    )
    assert result.exit_code == 2


def test_preprocess_of_an_empty_source_exits_2_naming_it(tmp_path):
    runner = CliRunner()
    tok_dir = tmp_path / "tok"
    args = [
        "tokenizer",
        "train",
        "--data",
        f"{SHARED / 'sst2' / 'dev.tsv'}:sentence",
        "--vocab-size",
        "300",
        "--output",
        str(tok_dir),
    ]
    assert runner.invoke(cli, args).exit_code == 0
    (tmp_path / "empty.jsonl").write_text("\n")
    result = runner.invoke(
        cli,
        [
            "preprocess",
            "--data",
            str(tmp_path / "empty.jsonl"),
            "--tokenizer",
            str(tok_dir),
            "--seq-len",
            "32",
            "--output",
            str(tmp_path / "p"),
            "--workers",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 2 and "empty.jsonl" in result.output
