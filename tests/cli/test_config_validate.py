"""`scaling config validate`: every defect rejected with exit 2 and its exact key path, all defects at once,
and a broken config fails fast without importing deepspeed."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from scaling.cli.main import cli

BASE: dict[str, Any] = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0,
    "bf16": {"enabled": True},
    "zero_optimization": {"stage": 2, "reduce_bucket_size": 4096},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.95]}},
}


def _set(cfg: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        cfg = cfg.setdefault(part, {})
    cfg[parts[-1]] = value


def _del(cfg: dict[str, Any], path: str) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        cfg = cfg[part]
    del cfg[parts[-1]]


# (id, edits {path: value, or None to delete}, extra CLI args, expected key path, a word the message must hold)
CASES: list[tuple[str, dict[str, Any], list[str], str, str]] = [
    ("unknown-top-key", {"trian_batch_size": 4}, [], "trian_batch_size", "did you mean 'train_batch_size'"),
    (
        "number-as-string",
        {"train_micro_batch_size_per_gpu": "8"},
        [],
        "train_micro_batch_size_per_gpu",
        "without quotes: 8",
    ),
    ("accum-zero", {"gradient_accumulation_steps": 0}, [], "gradient_accumulation_steps", ">= 1"),
    ("batch-arithmetic", {"train_batch_size": 5}, [], "train_batch_size", "data_parallel_size(2)"),
    ("clipping-not-number", {"gradient_clipping": "abc"}, [], "gradient_clipping", "expected a number"),
    ("stage-as-string", {"zero_optimization.stage": "2"}, [], "zero_optimization.stage", "without quotes"),
    (
        "stage-out-of-range",
        {"zero_optimization.stage": 4},
        [],
        "zero_optimization.stage",
        "one of 0, 1, 2, 3",
    ),
    (
        "offload-typo",
        {"zero_optimization.offload_optimiser": {"device": "cpu"}},
        [],
        "zero_optimization.offload_optimiser",
        "did you mean 'offload_optimizer'",
    ),
    (
        "offload-device",
        {"zero_optimization.offload_optimizer": {"device": "gpu"}},
        [],
        "zero_optimization.offload_optimizer.device",
        "none, cpu, nvme",
    ),
    (
        "offload-stage0",
        {"zero_optimization.stage": 0, "zero_optimization.offload_optimizer": {"device": "cpu"}},
        [],
        "zero_optimization.offload_optimizer",
        "stage 1, 2 or 3",
    ),
    (
        "param-offload-stage2",
        {"zero_optimization.offload_param": {"device": "cpu"}},
        [],
        "zero_optimization.offload_param",
        "needs ZeRO stage 3",
    ),
    (
        "nvme-without-path",
        {
            "zero_optimization.stage": 3,
            "zero_optimization.offload_param": {"device": "nvme"},
            "zero_optimization.offload_optimizer": {"device": "cpu"},
        },
        [],
        "zero_optimization.offload_param.nvme_path",
        "NVMe",
    ),
    ("bf16-and-fp16", {"fp16": {"enabled": True}}, [], "fp16.enabled", "both enabled"),
    ("bool-as-string", {"bf16.enabled": "true"}, [], "bf16.enabled", "write true without quotes"),
    (
        "fp16-window-zero",
        {"bf16.enabled": False, "fp16": {"enabled": True, "loss_scale_window": 0}},
        [],
        "fp16.loss_scale_window",
        ">= 1",
    ),
    (
        "fp16-unknown",
        {"bf16.enabled": False, "fp16": {"enabled": True, "initial_scale": 8}},
        [],
        "fp16.initial_scale",
        "did you mean 'initial_scale_power'",
    ),
    ("optimizer-type", {"optimizer.type": "adamw_torch"}, [], "optimizer.type", "did you mean 'adamw'"),
    (
        "optimizer-param-typo",
        {"optimizer.params.beta": [0.9, 0.99]},
        [],
        "optimizer.params.beta",
        "did you mean 'betas'",
    ),
    ("lr-as-string", {"optimizer.params.lr": "1e-4"}, [], "optimizer.params.lr", "without quotes"),
    ("betas-length", {"optimizer.params.betas": [0.9]}, [], "optimizer.params.betas", "two numbers"),
    (
        "scheduler-type",
        {"scheduler": {"type": "WarmupCosineLr"}},
        [],
        "scheduler.type",
        "did you mean 'WarmupCosineLR'",
    ),
    (
        "scheduler-param",
        {"scheduler": {"type": "WarmupLR", "params": {"warmup_steps": 10}}},
        [],
        "scheduler.params.warmup_steps",
        "did you mean 'warmup_num_steps'",
    ),
    (
        "warmup-over-total",
        {"scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 100, "total_num_steps": 10}}},
        [],
        "scheduler.params.warmup_num_steps",
        "exceeds total_num_steps",
    ),
    (
        "warmup-type",
        {"scheduler": {"type": "WarmupLR", "params": {"warmup_type": "cosine"}}},
        [],
        "scheduler.params.warmup_type",
        "log, linear",
    ),
    (
        "onecycle-param",
        {"scheduler": {"type": "OneCycle", "params": {"cycle_min_lrr": 0.1}}},
        [],
        "scheduler.params.cycle_min_lrr",
        "did you mean 'cycle_min_lr'",
    ),
    (
        "activation-ckpt-typo",
        {"activation_checkpointing": {"partition_activation": True}},
        [],
        "activation_checkpointing.partition_activation",
        "did you mean 'partition_activations'",
    ),
    (
        "pipeline-zero2",
        {"gradient_accumulation_steps": 2},
        ["--pipeline-stages", "2", "--world-size", "2"],
        "zero_optimization.stage",
        "pipeline",
    ),
    (
        "pipeline-accum",
        {"zero_optimization.stage": 1},
        ["--pipeline-stages", "2", "--world-size", "2"],
        "gradient_accumulation_steps",
        "at least 2 micro-batches",
    ),
    (
        "tp-world",
        {"zero_optimization.stage": 1},
        ["--tensor-parallel", "3"],
        "--tensor-parallel",
        "does not divide the world size 2",
    ),
    (
        "zeropp-stage2",
        {"zero_optimization.zero_quantized_weights": True},
        [],
        "zero_optimization.zero_quantized_weights",
        "needs ZeRO stage 3",
    ),
    (
        "hpz-world",
        {"zero_optimization.stage": 3, "zero_optimization.zero_hpz_partition_size": 3},
        [],
        "zero_optimization.zero_hpz_partition_size",
        "does not divide the world size 2",
    ),
    (
        "removed-key",
        {"curriculum_learning": {"enabled": True}},
        [],
        "curriculum_learning",
        "no longer supported",
    ),
    ("monitor-bool", {"tensorboard": {"enabled": "yes"}}, [], "tensorboard.enabled", "true/false"),
    (
        "profiler-typo",
        {"flops_profiler": {"enabled": True, "profile_steps": 2}},
        [],
        "flops_profiler.profile_steps",
        "did you mean 'profile_step'",
    ),
    (
        "micro-vs-option",
        {},
        ["--micro-batch", "4"],
        "train_micro_batch_size_per_gpu",
        "contradicts --micro-batch 4",
    ),
    (
        "auto-not-allowed",
        # DeepSpeed drops "auto" only inside its pydantic sections; activation_checkpointing is not one.
        {"activation_checkpointing.partition_activations": "auto"},
        [],
        "activation_checkpointing.partition_activations",
        '"auto" is not supported',
    ),
    ("null-value", {"gradient_clipping": None}, [], "gradient_clipping", "null"),
    ("dtype-value", {"data_types": {"grad_accum_dtype": "fp8"}}, [], "data_types.grad_accum_dtype", "one of"),
    ("comms-logger-int", {"comms_logger": {"enabled": 1}}, [], "comms_logger.enabled", "write true"),
    (
        "tag-validation",
        {"checkpoint": {"tag_validation": "Strict"}},
        [],
        "checkpoint.tag_validation",
        "one of",
    ),
    ("section-type", {"optimizer": "adam"}, [], "optimizer", "expected a JSON object"),
    ("bf16-shorthand", {"bf16": True}, [], "bf16", 'write {"enabled": true}'),
    (
        "offload-ratio",
        {"zero_optimization.offload_optimizer": {"device": "cpu", "ratio": "half"}},
        [],
        "zero_optimization.offload_optimizer.ratio",
        "expected a number",
    ),
]


def _write(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def _validate(path: Path, *args: str) -> Any:
    return CliRunner().invoke(
        cli, ["config", "validate", str(path), "--world-size", "2", "--no-deepspeed", *args]
    )


def test_base_config_is_valid(tmp_path: Path) -> None:
    result = _validate(_write(tmp_path, BASE))
    assert result.exit_code == 0, result.output
    assert "global batch 4" in result.output


@pytest.mark.parametrize(("edits", "args", "path", "word"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_defect_is_rejected_with_its_key_path(
    tmp_path: Path, edits: dict[str, Any], args: list[str], path: str, word: str
) -> None:
    cfg = copy.deepcopy(BASE)
    for key, value in edits.items():
        _set(cfg, key, value)
    result = _validate(_write(tmp_path, cfg), *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith(f"  - {path}")]
    assert lines, f"no problem names {path!r}:\n{result.output}"
    assert any(word in line for line in lines), result.output


def test_json_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text('{\n  "train_micro_batch_size_per_gpu": 2,\n  "bf16": {"enabled": true\n}\n')
    result = _validate(path)
    assert result.exit_code == 2
    assert f"{path}: invalid JSON at line 5, column 1" in result.output


def test_trailing_commas_and_comments_load_as_deepspeed_loads_them_with_a_notice(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(
        '{\n  // micro batch\n  "train_micro_batch_size_per_gpu": 2,\n  "bf16": {"enabled": true,},\n}\n'
    )
    result = _validate(path, "--no-deepspeed")
    assert result.exit_code == 0, result.output
    assert "HF Trainer and accelerate would refuse the file" in result.output


def test_duplicate_key_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text('{"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 1, "stage": 3}}')
    result = _validate(path)
    assert result.exit_code == 2
    assert "  - zero_optimization.stage = 3: duplicate key" in result.output


def test_many_defects_are_all_reported_in_one_run(tmp_path: Path) -> None:
    cfg = copy.deepcopy(BASE)
    edits = {
        "trian_batch_size": 4,
        "train_micro_batch_size_per_gpu": "8",
        "zero_optimization.stage": 0,
        "zero_optimization.offload_optimizer": {"device": "cpu"},
        "fp16": {"enabled": True},
        "optimizer.params.beta": [0.9, 0.9],
        "scheduler": {"type": "WarmupLR", "params": {"warmup_steps": 3}},
        "activation_checkpointing": {"cpu_checkpoint": True},
    }
    for key, value in edits.items():
        _set(cfg, key, value)
    result = _validate(_write(tmp_path, cfg))
    assert result.exit_code == 2
    expected = [
        "trian_batch_size",
        "train_micro_batch_size_per_gpu",
        "zero_optimization.offload_optimizer",
        "fp16.enabled",
        "optimizer.params.beta",
        "scheduler.params.warmup_steps",
        "activation_checkpointing.cpu_checkpoint",
    ]
    for path in expected:
        assert f"  - {path}" in result.output, path
    assert f"{len(expected)} problem(s)" in result.output


def test_tp_must_divide_heads_when_a_model_is_given(tmp_path: Path) -> None:
    model = tmp_path / "model.json"
    model.write_text(
        json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 64, "n_head": 2, "vocab_size": 64})
    )
    cfg = copy.deepcopy(BASE)
    _set(cfg, "zero_optimization.stage", 1)
    result = _validate(
        _write(tmp_path, cfg), "--tensor-parallel", "4", "--world-size", "4", "--model", str(model)
    )
    assert result.exit_code == 2
    assert (
        "  - tensor_parallel.autotp_size = 4: does not divide the model's 2 attention heads" in result.output
    )


def test_broken_config_exits_2_fast_without_importing_deepspeed(tmp_path: Path) -> None:
    cfg = copy.deepcopy(BASE)
    _set(cfg, "zero_optimization.stage", "3")
    path = _write(tmp_path, cfg)
    probe = (
        "import sys, atexit; from scaling.cli.main import cli\n"
        "atexit.register(lambda: print('HEAVY', sorted(m for m in ('deepspeed', 'torch', 'transformers')"
        " if m in sys.modules), file=sys.stderr))\n"
        "cli(['config', 'validate', sys.argv[1]])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert "zero_optimization.stage = '3'" in proc.stderr
    assert "HEAVY []" in proc.stderr
    assert elapsed < 1.5, elapsed  # interpreter start included; the check itself is milliseconds


def test_valid_config_passes_deepspeed_own_validation(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["config", "validate", str(_write(tmp_path, BASE)), "--world-size", "2"])
    assert result.exit_code == 0, result.output


def test_deepspeed_own_validation_runs_at_the_data_parallel_size(tmp_path: Path) -> None:
    from scaling.cli.config import deepspeed_check
    from scaling.config.deepspeed import RunValues, resolve_deepspeed
    from scaling.errors import ConfigError

    resolved = resolve_deepspeed(copy.deepcopy(BASE), [], RunValues(world_size=4, micro_batch=2))
    deepspeed_check(resolved)  # 2 x 1 x dp 4 = 8: DeepSpeed agrees
    resolved.config["train_batch_size"] = 6  # tamper after our checks: DeepSpeed's own assertion must fire
    with pytest.raises(ConfigError, match="6 != 2 \\* 1 \\* 4"):
        deepspeed_check(resolved)
