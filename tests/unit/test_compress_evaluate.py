"""Evaluation metrics and the comparison report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import tiny
import torch

from scaling.compress.config import EvalConfig, PruneConfig
from scaling.compress.errors import CompressUserError
from scaling.compress.evaluate import evaluate_path
from scaling.compress.model_io import load_hf
from scaling.compress.prune import prune
from scaling.compress.report import evaluate_all, write_report

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]) -> dict[str, Path]:
    return tiny_models


def test_clm_perplexity_matches_the_model_loss(models: dict[str, Path], tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("\n".join(" ".join(p.split()) for p in tiny.corpus(200)[150:]))
    cfg = EvalConfig(data=str(text), seq_len=32, max_samples=8, batch_size=4, speed=False)
    res = evaluate_path(models["llama"], cfg)
    loaded = load_hf(models["llama"])
    ids: list[int] = []
    for line in text.read_text().splitlines():
        ids += loaded.tokenizer(line, add_special_tokens=False)["input_ids"] + [loaded.tokenizer.eos_token_id]
    blocks = torch.tensor(ids[: 8 * 32]).view(8, 32)
    with torch.no_grad():
        loss = loaded.model(input_ids=blocks, labels=blocks).loss
    assert res["perplexity"] == pytest.approx(math.exp(loss.item()), rel=1e-4)
    # Trained a little on this kind of text, so clearly better than uniform over the vocabulary.
    assert res["perplexity"] < 600


def test_mlm_and_size_and_speed(models: dict[str, Path]) -> None:
    res = evaluate_path(
        models["bert-mlm"], EvalConfig(data="builtin:pydoc", seq_len=32, max_samples=4, runs=2, warmup=1)
    )
    assert 1 < res["perplexity"] < 1000
    assert res["size_bytes"] == (models["bert-mlm"] / "model.safetensors").stat().st_size
    assert res["parameters"] == sum(p.numel() for p in load_hf(models["bert-mlm"]).model.parameters())
    assert res["latency_ms"] > 0 and res["throughput_tokens_per_s"] > 0
    assert res["latency_min_ms"] <= res["latency_ms"] <= res["latency_max_ms"]


@pytest.mark.skipif(not (SHARED / "sst2" / "dev.tsv").is_file(), reason="shared data absent")
def test_seq_cls_accuracy_against_manual_argmax(models: dict[str, Path]) -> None:
    spec = f"{SHARED / 'sst2' / 'dev.tsv'}:sentence"
    res = evaluate_path(
        models["bert-cls"], EvalConfig(task="seq-cls", data=spec, max_samples=32, speed=False)
    )
    loaded = load_hf(models["bert-cls"])
    rows = [line.split("\t") for line in (SHARED / "sst2" / "dev.tsv").read_text().splitlines()[1:33]]
    enc = loaded.tokenizer(
        [r[0] for r in rows], padding=True, truncation=True, max_length=128, return_tensors="pt"
    )
    with torch.no_grad():
        pred = loaded.model(**enc).logits.argmax(-1)
    assert res["accuracy"] == pytest.approx(
        float((pred == torch.tensor([int(r[1]) for r in rows])).float().mean())
    )


def test_task_mismatch_is_a_user_error(models: dict[str, Path]) -> None:
    with pytest.raises(CompressUserError, match="is a clm model"):
        evaluate_path(models["gpt2"], EvalConfig(task="seq-cls", data="builtin:pydoc", speed=False))


def test_report_writes_table_json_and_plot(models: dict[str, Path], tmp_path: Path) -> None:
    pruned = tmp_path / "pruned"
    prune(models["gpt2"], pruned, PruneConfig(method="structured", ffn=0.5))
    rows = evaluate_all(
        [models["gpt2"], pruned],
        EvalConfig(data="builtin:pydoc", seq_len=32, max_samples=4, runs=2, warmup=1),
    )
    files = write_report(rows, tmp_path / "report")
    md = files["markdown"].read_text()
    assert "| gpt2 | float |" in md and "| pruned | structured |" in md and "perplexity" in md
    data = json.loads(files["json"].read_text())
    assert data[1]["size_bytes"] < data[0]["size_bytes"]
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_labels_tell_exported_runs_apart() -> None:
    from scaling.compress.report import display_names

    three_finals = display_names(["/r/teacher/final", "/r/student/final", "/r/student-int8", "/x/final"])
    assert three_finals == ["teacher/final", "student/final", "student-int8", "x/final"]
    assert display_names(["/r/teacher/final", "/r/student/final", "/r/student-int8"]) == [
        "teacher/final",
        "student/final",
        "student-int8",
    ]


def test_report_gives_latency_ranges_and_marks_differences_inside_the_noise() -> None:
    from scaling.compress.report import markdown

    def row(name: str, median: float, low: float, high: float) -> dict:
        return {"model": name, "size_bytes": 1000, "latency_ms": median, "latency_min_ms": low,
                "latency_max_ms": high, "throughput_tokens_per_s": 1000 / median}  # fmt: skip

    rows = [row("float", 36.6, 30.0, 41.0), row("int8", 34.0, 33.0, 52.0), row("pruned", 20.0, 18.0, 21.0)]
    table = markdown(rows).splitlines()
    assert "latency ms: median [min, max]" in table[0]
    cells = {line.split("|")[1].strip(): line for line in table[2:5]}
    assert "| 36.6 [30.0, 41.0] | 1.00 |" in cells["float"]
    assert "| 34.0 [33.0, 52.0] | ~0.93 |" in cells["int8"]  # ranges overlap: not measurably faster
    assert "| 20.0 [18.0, 21.0] | 0.55 |" in cells["pruned"]  # apart: a real difference
    assert "inside the noise" in markdown(rows)
