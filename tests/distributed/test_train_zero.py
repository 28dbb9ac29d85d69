"""2-rank gloo training of tiny GPT-2 / Llama / BERT under each ZeRO stage, in-process ranks."""

from __future__ import annotations

import pytest
from harness import run_ranks
from ranks import train_cli

ZERO_CONFIGS = ["zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"]


def base_args(out, corpus, tokenizer, *extra: str) -> list[str]:
    return [
        "--data", str(corpus), "--tokenizer", str(tokenizer), "--output", str(out),
        "--seq-len", "64", "--micro-batch", "4", "--lr", "3e-3", "--precision", "fp32",
        "--log-every", "5", "--no-progress", "--no-tensorboard", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("ds_config", ZERO_CONFIGS)
def test_zero_stages_train_with_falling_loss(tmp_path, small_corpus, clm_tokenizer, model, ds_config):
    args = base_args(
        tmp_path / "run", small_corpus, clm_tokenizer,
        "--model", model, "--ds-config", ds_config, "--max-steps", "20", "--no-export",
    )  # fmt: skip
    rank0, rank1 = run_ranks(train_cli, 2, args)
    assert rank0["exit"] == 0 and rank1["exit"] == 0
    losses = [r["loss"] for r in rank0["records"] if "loss" in r]
    assert [r["step"] for r in rank0["records"] if "loss" in r] == [5, 10, 15, 20]
    assert losses[-1] < losses[0] - 0.3, losses


def test_bf16_zero2_trains(tmp_path, small_corpus, clm_tokenizer):
    args = base_args(
        tmp_path / "run", small_corpus, clm_tokenizer, "--model", "tiny-llama", "--max-steps", "20"
    )
    args[args.index("fp32")] = "bf16"
    rank0, _ = run_ranks(train_cli, 2, args)
    losses = [r["loss"] for r in rank0["records"] if "loss" in r]
    assert losses[-1] < losses[0] - 0.3, losses
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
