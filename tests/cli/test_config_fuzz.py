"""Broken configs through the CLI: each gives exit 2 and one message naming the key and the fix, never a
traceback (types, ranges, encodings, duplicates, comments, nulls, non-object tops, empty files)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from scaling.cli.main import cli

BASE: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,
    "bf16": {"enabled": True},
    "zero_optimization": {"stage": 2},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8}},
}


def _mutated(path: str, value: Any) -> bytes:
    cfg = copy.deepcopy(BASE)
    node = cfg
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return json.dumps(cfg).encode()


# (id, file bytes, key the message names, words of the fix)
CASES: list[tuple[str, bytes, str, str]] = [
    ("stage-string", _mutated("zero_optimization.stage", "2"), "zero_optimization.stage", "without quotes"),
    ("stage-5", _mutated("zero_optimization.stage", 5), "zero_optimization.stage", "one of 0, 1, 2, 3"),
    ("stage-float", _mutated("zero_optimization.stage", 2.5), "zero_optimization.stage", "whole number"),
    ("stage-null", _mutated("zero_optimization.stage", None), "zero_optimization.stage", "give a value"),
    ("stage-list", _mutated("zero_optimization.stage", [2]), "zero_optimization.stage", "whole number"),
    ("zero-bool", _mutated("zero_optimization", True), "zero_optimization", "JSON object"),
    ("bf16-bool", _mutated("bf16", True), "bf16", '{"enabled": true}'),
    ("bf16-enabled-int", _mutated("bf16.enabled", 1), "bf16.enabled", "write true"),
    ("bf16-enabled-str", _mutated("bf16.enabled", "true"), "bf16.enabled", "without quotes"),
    ("micro-zero", _mutated("train_micro_batch_size_per_gpu", 0), "train_micro_batch_size_per_gpu", ">= 1"),
    (
        "micro-negative",
        _mutated("train_micro_batch_size_per_gpu", -4),
        "train_micro_batch_size_per_gpu",
        ">= 1",
    ),
    (
        "micro-string",
        _mutated("train_micro_batch_size_per_gpu", "two"),
        "train_micro_batch_size_per_gpu",
        "whole number",
    ),
    (
        "accum-float",
        _mutated("gradient_accumulation_steps", 1.5),
        "gradient_accumulation_steps",
        "whole number",
    ),
    ("clip-string", _mutated("gradient_clipping", "abc"), "gradient_clipping", "number"),
    ("clip-negative", _mutated("gradient_clipping", -1), "gradient_clipping", ">= 0"),
    ("clip-null", _mutated("gradient_clipping", None), "gradient_clipping", "give a value"),
    (
        "reduce-bucket-0",
        _mutated("zero_optimization.reduce_bucket_size", 0),
        "zero_optimization.reduce_bucket_size",
        "> 0",
    ),
    (
        "sub-group-negative",
        _mutated("zero_optimization.sub_group_size", -1),
        "zero_optimization.sub_group_size",
        ">= 0",
    ),
    (
        "offload-device",
        _mutated("zero_optimization.offload_optimizer", {"device": "gpu"}),
        "zero_optimization.offload_optimizer.device",
        "one of none, cpu, nvme",
    ),
    (
        "offload-ratio",
        _mutated("zero_optimization.offload_optimizer", {"device": "cpu", "ratio": 2}),
        "zero_optimization.offload_optimizer.ratio",
        "<= 1",
    ),
    (
        "unknown-top",
        _mutated("train_micro_batch_size_per_gp", 2),
        "train_micro_batch_size_per_gp",
        "did you mean",
    ),
    ("unknown-zero", _mutated("zero_optimization.stge", 2), "zero_optimization.stge", "did you mean 'stage'"),
    ("unknown-bf16", _mutated("bf16.enable", True), "bf16.enable", "did you mean 'enabled'"),
    ("removed-top", _mutated("sparse_attention", {"mode": "fixed"}), "sparse_attention", "remove it"),
    ("optimizer-typo", _mutated("optimizer.type", "AdanW"), "optimizer.type", "did you mean 'AdamW'"),
    ("optimizer-missing-type", _mutated("optimizer", {"params": {"lr": 1e-4}}), "optimizer.type", "one of"),
    ("betas-above-1", _mutated("optimizer.params.betas", [0.9, 1.5]), "optimizer.params.betas", "[0, 1)"),
    (
        "betas-three",
        _mutated("optimizer.params.betas", [0.9, 0.99, 0.9]),
        "optimizer.params.betas",
        "two numbers",
    ),
    ("eps-zero", _mutated("optimizer.params.eps", 0), "optimizer.params.eps", "1e-8"),
    ("lr-negative", _mutated("optimizer.params.lr", -1), "optimizer.params.lr", ">= 0"),
    (
        "opt-param-typo",
        _mutated("optimizer.params.weight_decy", 0.1),
        "optimizer.params.weight_decy",
        "did you mean 'weight_decay'",
    ),
    (
        "scheduler-type",
        _mutated("scheduler", {"type": "WarmupLr", "params": {}}),
        "scheduler.type",
        "did you mean 'WarmupLR'",
    ),
    (
        "fp16-window-0",
        _mutated("fp16", {"enabled": False, "loss_scale_window": 0}),
        "fp16.loss_scale_window",
        ">= 1",
    ),
    (
        "auto-not-allowed",
        _mutated("activation_checkpointing.partition_activations", "auto"),
        "activation_checkpointing.partition_activations",
        "true/false",
    ),
    (
        "tb-path-int",
        _mutated("tensorboard", {"enabled": True, "output_path": 5}),
        "tensorboard.output_path",
        "string",
    ),
    ("batch-contradiction", _mutated("train_batch_size", 7), "train_batch_size", "auto"),
    (
        "duplicate-key",
        b'{"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 1, "stage": 2}}',
        "zero_optimization.stage",
        "last one would silently win",
    ),
    (
        "invalid-utf8",
        b'{"train_micro_batch_size_per_gpu": 2, "_comment": "caf\xe9"}',
        "ds.json",
        "save the file as UTF-8",
    ),
    ("latin1-bom-ish", b'\xff\xfe{"a": 1}', "ds.json", "save the file as UTF-8"),
    ("empty-file", b"", "ds.json", "JSON object"),
    ("whitespace-file", b"  \n\n", "ds.json", "JSON object"),
    ("top-list", b"[1, 2]", "ds.json", "wrap it in"),
    ("top-string", b'"zero2"', "ds.json", "wrap it in"),
    ("top-null", b"null", "ds.json", "wrap it in"),
    ("truncated", b'{"zero_optimization": {"stage": 2}', "ds.json", "line 1"),
    ("unquoted-garbage", b"{\n  stage: : 2\n}", "ds.json", "line 2"),
    (
        "nested-null-section",
        _mutated("zero_optimization.offload_param", {"device": None}),
        "zero_optimization.offload_param.device",
        "give a value",
    ),
]


@pytest.mark.parametrize("name, content, key, fix", CASES, ids=[c[0] for c in CASES])
def test_broken_config_gives_one_message_naming_key_and_fix(
    tmp_path: Path, name: str, content: bytes, key: str, fix: str
) -> None:
    path = tmp_path / "ds.json"
    path.write_bytes(content)
    result = CliRunner().invoke(cli, ["config", "validate", str(path), "--world-size", "8", "--no-deepspeed"])
    assert result.exit_code == 2, result.output
    assert ("Traceback" not in result.output and result.exception is None) or isinstance(
        result.exception, SystemExit
    )
    lines = [line for line in result.output.splitlines() if line.startswith("  - ")]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"  - {key}") or key in lines[0], result.output
    assert fix in lines[0], result.output


def test_there_are_at_least_40_cases() -> None:
    assert len(CASES) >= 40
