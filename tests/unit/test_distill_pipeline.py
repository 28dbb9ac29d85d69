"""The pipeline's distill stage (`run_distillation`): a pruned student recovers by distillation from the
unpruned model, and the stage's output is a plain HF model with its compression record."""

from __future__ import annotations

import json

import pytest
from harness import run_ranks
from ranks_distill import pipeline_cli

from scaling.compress.distill import run_distillation
from scaling.compress.errors import CompressUserError

pytest.importorskip("neural_compressor")


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["llama"]


def test_prune_then_distill_recovers_quality(llama, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {llama}\n"
        "data: builtin:pydoc\n"
        "stages:\n"
        "  - prune: {method: structured, ffn: 0.5, heads: 0.5, importance_samples: 4, seq_len: 32}\n"
        "  - distill: {steps: 30, seq_len: 32, micro_batch: 8, lr: 0.002, alpha: 0.5, max_samples: 400}\n"
        "report: {seq_len: 32, max_samples: 16, speed: false}\n"
    )
    out = tmp_path / "out"
    result = run_ranks(pipeline_cli, 1, [str(recipe), "-o", str(out)])[0]
    assert result["exit"] == 0, result["output"]
    record = json.loads((out / "02-distill" / "compression.json").read_text())
    assert record["method"] == "distill" and record["format"] == "hf"
    assert record["results"]["steps"] == 30 and record["teacher"] == str(llama)
    assert record["source"] == str(out / "01-prune")  # stage paths point at the final directory
    rows = json.loads((out / "report" / "report.json").read_text())
    base, pruned, distilled = (r["perplexity"] for r in rows)
    # Distillation from the unpruned model (half its heads and FFN channels gone) lowers the perplexity.
    assert distilled < 0.9 * pruned, (base, pruned, distilled)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the scratch run is gone


def test_unknown_stage_options_and_missing_data(llama, tmp_path):
    with pytest.raises(CompressUserError, match=r"unknown option.*stepz"):
        run_distillation(llama, tmp_path / "o", teacher_dir=llama, data="builtin:pydoc", options={"stepz": 3})
    with pytest.raises(CompressUserError, match="needs data"):
        run_distillation(llama, tmp_path / "o", teacher_dir=llama, data=None, options={})
    assert not (tmp_path / "o").exists()
