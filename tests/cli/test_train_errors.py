"""Bad input to `scaling train`: one clear message naming the problem, exit code 2, no traceback."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from scaling.cli.main import cli


def run_train(*args: str):
    result = CliRunner().invoke(cli, ["train", *args])
    return result


@pytest.fixture
def ok_args(tmp_path, small_corpus, clm_tokenizer):
    return ["--model", "tiny-gpt2", "--data", str(small_corpus), "--tokenizer", str(clm_tokenizer),
            "--output", str(tmp_path / "run"), "--max-steps", "2", "--precision", "fp32"]  # fmt: skip


def replace(args, flag, value):
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


def assert_usage_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_missing_model_path(ok_args, tmp_path):
    result = run_train(*replace(ok_args, "--model", str(tmp_path / "nope")))
    assert_usage_error(result, "--model", "no such directory, config file or preset", "tiny-gpt2")


def test_model_dir_without_config(ok_args, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_train(*replace(ok_args, "--model", str(tmp_path / "empty")))
    assert_usage_error(result, "no config.json")


def test_missing_data_path(ok_args, tmp_path):
    result = run_train(*replace(ok_args, "--data", str(tmp_path / "missing.txt")))
    assert_usage_error(result, "missing.txt")


def test_empty_data(ok_args, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    result = run_train(*replace(ok_args, "--data", str(empty)))
    assert_usage_error(result, "empty.txt")


def test_malformed_ds_json_names_line_and_column(ok_args, tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{\n  "zero_optimization": {"stage" 2}\n}\n')  # a missing colon (trailing commas load)
    result = run_train(*ok_args, "--ds-config", str(bad))
    assert_usage_error(result, "line 2, column")


def test_unknown_precision(ok_args):
    result = run_train(*replace(ok_args, "--precision", "fp8"))
    assert_usage_error(result, "--precision", "fp8")


def test_batch_arithmetic_that_does_not_hold(ok_args, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4,
                              "gradient_accumulation_steps": 2, "zero_optimization": {"stage": 1}}))  # fmt: skip
    result = run_train(*ok_args, "--ds-config", str(ds))
    assert_usage_error(result, "train_batch_size", "64")


def test_json_value_contradicting_an_explicit_option_lists_every_mismatch(ok_args, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "gradient_clipping": 0.5,
                              "optimizer": {"type": "AdamW", "params": {"lr": 0.1}}}))  # fmt: skip
    result = run_train(
        *ok_args, "--ds-config", str(ds), "--micro-batch", "2", "--clip-grad", "1.0", "--lr", "0.01"
    )
    assert_usage_error(result, "train_micro_batch_size_per_gpu", "gradient_clipping", "optimizer.params.lr")


def test_missing_required_options():
    result = run_train("--data", "x.txt")
    assert_usage_error(result, "--model", "--output")


def test_bad_config_exits_before_any_process_group(ok_args, tmp_path):
    """A broken DeepSpeed config is rejected without importing DeepSpeed's engine."""
    import subprocess

    bad = tmp_path / "ds.json"
    bad.write_text('{"zero_optimization": {"stage": 7}}')
    code = (
        "import sys\nfrom scaling.cli.main import cli\n"
        "try:\n    cli.main(sys.argv[1:], standalone_mode=True)\n"
        "finally:\n    print('ENGINE_IMPORTED', 'deepspeed.runtime.engine' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, "train", *ok_args, "--ds-config", str(bad)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "zero_optimization.stage" in proc.stderr
    assert "ENGINE_IMPORTED False" in proc.stdout


def test_watch_options_that_cannot_work_are_refused_before_launch(ok_args, monkeypatch):
    result = run_train(*ok_args, "--early-stop-patience", "2")
    assert_usage_error(result, "--early-stop-patience", "--eval-data SPEC and --eval-every N")
    result = run_train(*ok_args, "--report-to", "tensorboard", "--no-tensorboard")
    assert_usage_error(result, "--report-to", "--no-tensorboard")
    result = run_train(*ok_args, "--report-to", "wandb,nope")
    assert_usage_error(result, "nope: choose from tensorboard, wandb, mlflow, csv")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    result = run_train(*ok_args, "--report-to", "mlflow")
    assert_usage_error(result, "MLFLOW_ALLOW_FILE_STORE=true")
