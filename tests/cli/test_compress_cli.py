"""`scaling compress ...`: tables on success; one clear message, exit 2 and nothing written on bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from scaling.cli.main import cli

pytest.importorskip("neural_compressor")


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]) -> dict[str, Path]:
    return tiny_models


def run(*args: str) -> object:
    return CliRunner().invoke(cli, ["compress", *map(str, args)])


def assert_usage_error(result: object, output: Path, *phrases: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in result.output, result.output
    assert not output.exists()
    assert not [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.tmp")]


def test_quantize_prints_a_table_and_writes_a_report(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "q"
    result = run(
        "quantize",
        models["llama"],
        "-o",
        out,
        "--bits",
        "8",
        "--group-size",
        "-1",
        "--report",
        "--eval-data",
        "builtin:pydoc",
        "--seq-len",
        "32",
    )
    assert result.exit_code == 0, result.output
    assert "linear weights ×" in result.output and "| llama | float |" in result.output
    manifest = json.loads((out / "compression.json").read_text())
    assert manifest["method"] == "rtn" and manifest["settings"]["bits"] == 8
    assert (out / "report" / "report.png").is_file()
    again = run("quantize", models["llama"], "-o", out)
    assert again.exit_code == 2 and "already exists" in again.output


def test_not_a_model_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for cmd in (["quantize"], ["prune", "--sparsity", "0.5"]):
        result = run(*cmd, tmp_path / "empty", "-o", tmp_path / "out")
        assert_usage_error(result, tmp_path / "out", "not a model directory")
    result = run("evaluate", tmp_path / "missing")
    assert result.exit_code == 2 and "no such file or directory" in result.output


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (["--method", "gptq"], ["gptq needs calibration data", "--calib-data"]),
        (["--method", "awq"], ["awq needs calibration data"]),
        (["--bits", "3"], ["3-bit weights are not supported"]),
        (["--bits", "8", "--asym"], ["8-bit asymmetric", "--sym"]),
        (["--method", "dynamic", "--bits", "4"], ["int8 only"]),
        (
            ["--method", "smoothquant", "--bits", "8", "--calib-data", "builtin:pydoc"],
            ["intel_extension_for_pytorch"],
        ),
        (["--calib-data", "nope.txt", "--method", "gptq"], ["nope.txt", "no such file"]),
    ],
)
def test_quantize_rejects_bad_input(
    models: dict[str, Path], tmp_path: Path, args: list[str], phrases: list[str]
) -> None:
    out = tmp_path / "out"
    assert_usage_error(run("quantize", models["gpt2"], "-o", out, *args), out, *phrases)


def test_missing_inc_is_named_with_the_install_command(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "neural_compressor", None)
    out = tmp_path / "out"
    assert_usage_error(
        run("quantize", models["gpt2"], "-o", out), out, "Intel Neural Compressor", "scaling[compress]"
    )


def test_prune_heads_on_bert_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("prune", models["bert-mlm"], "-o", out, "--method", "structured", "--heads", "0.25")
    assert_usage_error(result, out, "cannot be removed", "--ffn")


def test_prune_and_evaluate(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "p"
    result = run(
        "prune", models["llama"], "-o", out, "--method", "structured", "--heads", "0.5", "--ffn", "0.25"
    )
    assert result.exit_code == 0, result.output
    assert "parameters" in result.output and "heads" in result.output
    result = run(
        "evaluate",
        out,
        "--data",
        "builtin:pydoc",
        "--seq-len",
        "32",
        "--max-samples",
        "4",
        "--runs",
        "2",
        "--json",
        tmp_path / "e.json",
    )
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["perplexity"] > 1 and res["latency_ms"] > 0 and res["method"] == "structured"
    result = run(
        "report",
        models["llama"],
        out,
        "-o",
        tmp_path / "r",
        "--data",
        "builtin:pydoc",
        "--seq-len",
        "32",
        "--max-samples",
        "4",
        "--no-speed",
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "report.md").is_file() and (tmp_path / "r" / "report.json").is_file()


def test_pipeline_distill_unavailable_and_bad_recipes(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {models['llama']}\nstages:\n  - prune: {{method: structured, ffn: 0.25}}\n  - distill: {{}}\n"
    )
    from scaling.compress.pipeline import distiller

    if distiller() is None:
        assert_usage_error(run("pipeline", recipe, "-o", out), out, "distill stage unavailable")
    recipe.write_text("stages:\n  - shrink: {}\n  - quantize: {bitz: 4}\nextra: 1\n")
    assert_usage_error(
        run("pipeline", recipe, "-o", out),
        out,
        "model: missing",
        "unknown stage 'shrink'",
        "stages[1].quantize.bitz",
        "extra",
    )
    recipe.write_text(
        f"model: {models['llama']}\nstages:\n  - prune: {{method: magnitude}}\n  - quantize: {{method: gptq}}\n"
    )
    # The last stage is checked before the first runs.
    assert_usage_error(run("pipeline", recipe, "-o", out), out, "gptq needs calibration data")


def test_help_imports_no_heavy_library() -> None:
    import subprocess

    code = (
        "import sys; from click.testing import CliRunner; from scaling.cli.main import cli; "
        "r = CliRunner().invoke(cli, ['compress', 'quantize', '--help']); assert r.exit_code == 0, r.output; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'neural_compressor'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
