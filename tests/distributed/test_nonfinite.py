"""NaN/inf loss: stop naming step and rank, or skip the batch and count it; never save non-finite weights."""

from __future__ import annotations

import math

from harness import run_ranks
from ranks import train_cli_with_nan

from scaling.checkpoint import store


def args_for(out, corpus, tokenizer, *extra):
    return [
        "--model", "tiny-gpt2", "--data", str(corpus), "--tokenizer", str(tokenizer), "--output", str(out),
        "--precision", "fp32", "--seq-len", "32", "--micro-batch", "2", "--max-steps", "6", "--log-every", "1",
        "--save-every", "2", "--no-progress", "--no-tensorboard", "--no-export", *extra,
    ]  # fmt: skip


def test_stop_names_step_and_rank(tmp_path, small_corpus, clm_tokenizer):
    out = tmp_path / "run"
    results = run_ranks(train_cli_with_nan, 2, args_for(out, small_corpus, clm_tokenizer), 1, [2])
    for result in results:  # every rank stops, with the same message
        assert result["exit"] == 2
        assert "non-finite loss at step 3, rank(s) 1" in result["message"]
    # the checkpoint of step 2 was committed before; nothing after it
    assert store.read_latest(out / "checkpoints").step == 2


def test_skip_counts_and_continues(tmp_path, small_corpus, clm_tokenizer):
    out = tmp_path / "run"
    args = args_for(out, small_corpus, clm_tokenizer, "--on-nan", "skip")
    rank0, rank1 = run_ranks(train_cli_with_nan, 2, args, 0, [1, 4])
    assert rank0["exit"] == 0 and rank1["exit"] == 0
    records = [r for r in rank0["records"] if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert records[-1]["skipped_nonfinite"] == 2
    assert store.read_latest(out / "checkpoints").step == 6


def test_stop_with_accumulation_catches_an_early_micro_batch_before_the_step(
    tmp_path, small_corpus, clm_tokenizer
):
    # One agreement per optimizer step: the NaN of micro-batch 0 of step 2 (call 2) is remembered on rank 1
    # and agreed on before micro-batch 1's backward, so the step never applies it.
    out = tmp_path / "run"
    args = args_for(out, small_corpus, clm_tokenizer, "--grad-accum", "2")
    results = run_ranks(train_cli_with_nan, 2, args, 1, [2])
    for result in results:
        assert result["exit"] == 2
        assert "non-finite loss at step 2, rank(s) 1" in result["message"]
    assert store.read_latest(out / "checkpoints") is None
