"""Exactness: 2N steps in one go == N steps, a new process group, then N more (float.hex of every loss)."""

from __future__ import annotations

import pytest
from harness import run_ranks
from ranks import train_cli

N = 3


def args_for(out, corpus, tokenizer, ds_config, precision, max_steps, *extra):
    return [
        "--model", "tiny-gpt2", "--data", str(corpus), "--tokenizer", str(tokenizer), "--output", str(out),
        "--ds-config", ds_config, "--precision", precision, "--seq-len", "32", "--micro-batch", "2",
        "--grad-accum", "2", "--lr", "3e-3", "--warmup-steps", "2", "--max-steps", str(max_steps),
        "--log-every", "1", "--save-every", str(N), "--no-progress", "--no-tensorboard", "--no-export", *extra,
    ]  # fmt: skip


def losses(result):
    return {r["step"]: r["loss_hex"] for r in result["records"] if "loss_hex" in r}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("ds_config", ["zero0", "zero2", "zero3"])
def test_resume_reproduces_uninterrupted_losses(tmp_path, small_corpus, clm_tokenizer, ds_config, precision):
    straight = run_ranks(
        train_cli, 2, args_for(tmp_path / "a", small_corpus, clm_tokenizer, ds_config, precision, 2 * N)
    )[0]
    # the interrupted run stops after N of its 2N steps (its checkpoint is the resume point) ...
    first = run_ranks(
        train_cli, 2,
        args_for(tmp_path / "b", small_corpus, clm_tokenizer, ds_config, precision, 2 * N, "--halt-at-step", str(N)),
    )[0]  # fmt: skip
    # ... and a fresh set of processes continues it to 2N
    second = run_ranks(
        train_cli, 2,
        args_for(tmp_path / "b", small_corpus, clm_tokenizer, ds_config, precision, 2 * N, "--resume", "auto"),
    )[0]  # fmt: skip
    full = losses(straight)
    resumed = losses(second)  # metrics.jsonl is appended to: it holds both halves
    assert sorted(full) == list(range(1, 2 * N + 1))
    assert {s: full[s] for s in range(1, N + 1)} == losses(first)
    assert {s: full[s] for s in range(N + 1, 2 * N + 1)} == {s: resumed[s] for s in range(N + 1, 2 * N + 1)}
