"""Encoders: tiny BERT trains with masked LM and with sequence classification on SST-2 (2 gloo ranks)."""

from __future__ import annotations

import pytest
from harness import run_ranks
from ranks import train_cli


@pytest.fixture(scope="module")
def sst2_tokenizer(shared_data, tmp_path_factory):
    from scaling.data import DataConfig, build_tokenizer

    out = tmp_path_factory.mktemp("tok") / "sst2"
    data = DataConfig(train=[f"{shared_data / 'sst2' / 'train.tsv'}:sentence"])
    build_tokenizer("tiny-bert", None, data, task="seq-cls", vocab_size=4096, save_dir=out).save_pretrained(
        out
    )
    return out


def common(out, tokenizer):
    return ["--model", "tiny-bert", "--tokenizer", str(tokenizer), "--output", str(out), "--precision", "fp32",
            "--no-progress", "--no-tensorboard", "--ds-config", "zero2"]  # fmt: skip


def test_seq_cls_on_sst2_beats_chance(tmp_path, shared_data, sst2_tokenizer):
    sst2 = shared_data / "sst2"
    args = [
        *common(tmp_path / "run", sst2_tokenizer),
        "--task", "seq-cls", "--data", f"{sst2 / 'train.tsv'}:sentence", "--eval-data", f"{sst2 / 'dev.tsv'}:sentence",
        "--seq-len", "64", "--micro-batch", "16", "--lr", "2e-3", "--warmup-steps", "10", "--max-steps", "200",
        "--log-every", "20", "--eval-batches", "28",
    ]  # fmt: skip
    rank0, _ = run_ranks(train_cli, 2, args)
    assert rank0["exit"] == 0
    evals = [r for r in rank0["records"] if "eval_accuracy" in r]
    assert evals and evals[-1]["eval_accuracy"] > 0.6, evals  # chance is ~0.51 on dev
    losses = [r["loss"] for r in rank0["records"] if "loss" in r]
    assert losses[-1] < losses[0]


def test_mlm_loss_falls(tmp_path, small_corpus, sst2_tokenizer):
    args = [
        *common(tmp_path / "run", sst2_tokenizer),
        "--task", "mlm", "--data", str(small_corpus), "--eval-data", str(small_corpus), "--seq-len", "64",
        "--micro-batch", "8", "--lr", "3e-3", "--max-steps", "30", "--log-every", "10", "--eval-batches", "4",
    ]  # fmt: skip
    rank0, _ = run_ranks(train_cli, 2, args)
    losses = [r["loss"] for r in rank0["records"] if "loss" in r]
    assert losses[-1] < losses[0] - 0.5, losses
    assert any("eval_perplexity" in r for r in rank0["records"])
    from transformers import AutoModelForMaskedLM

    assert AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "final").config.model_type == "bert"
