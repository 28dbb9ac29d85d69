"""Options whose effect is easy to get silently wrong: activation checkpointing, --epochs, --eval-every."""

from __future__ import annotations

import json

from harness import run_ranks
from ranks import train_cli


def args_for(out, corpus, tokenizer, *extra):
    return [
        "--model", "tiny-llama", "--data", str(corpus), "--tokenizer", str(tokenizer), "--output", str(out),
        "--precision", "fp32", "--seq-len", "32", "--micro-batch", "2", "--lr", "3e-3", "--log-every", "1",
        "--no-progress", "--no-tensorboard", "--no-export", *extra,
    ]  # fmt: skip


def test_activation_checkpointing_keeps_the_losses(tmp_path, small_corpus, clm_tokenizer):
    plain = run_ranks(
        train_cli, 2, args_for(tmp_path / "a", small_corpus, clm_tokenizer, "--max-steps", "4")
    )[0]
    recomputed = run_ranks(
        train_cli, 2,
        args_for(tmp_path / "b", small_corpus, clm_tokenizer, "--max-steps", "4", "--activation-checkpointing"),
    )[0]  # fmt: skip
    a = [r["loss"] for r in plain["records"]]
    b = [r["loss"] for r in recomputed["records"]]
    assert len(a) == 4 and all(abs(x - y) < 1e-5 for x, y in zip(a, b, strict=True)), (a, b)


def test_epochs_set_the_run_length_and_eval_every_runs_periodically(tmp_path, shared_data, clm_tokenizer):
    lines = (shared_data / "tinyshakespeare.txt").read_text().splitlines()[:400]
    corpus = tmp_path / "small.txt"
    corpus.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    result = run_ranks(
        train_cli, 2,
        args_for(out, corpus, clm_tokenizer, "--epochs", "1", "--eval-data", str(corpus), "--eval-every", "5",
                 "--eval-batches", "2"),
    )[0]  # fmt: skip
    run_config = json.loads((out / "run_config.json").read_text())
    total = run_config["total_steps"]
    train_records = [r for r in result["records"] if "loss" in r]
    assert 5 < total < 200 and train_records[-1]["step"] == total
    eval_steps = [r["step"] for r in result["records"] if "eval_loss" in r]
    assert eval_steps[: total // 5] == list(range(5, total + 1, 5))


def test_fused_loss_trains_like_the_plain_loss(tmp_path, small_corpus, clm_tokenizer):
    def run(name, *extra):
        out = tmp_path / name
        args = args_for(out, small_corpus, clm_tokenizer, "--max-steps", "4", "--eval-data", str(small_corpus),
                        "--eval-batches", "2", *extra)  # fmt: skip
        records = run_ranks(train_cli, 2, args)[0]["records"]
        log = "\n".join(p.read_text() for p in sorted((out / "logs").glob("rank-*.log")))
        return records, log

    fused, fused_log = run("fused")
    plain, plain_log = run("plain", "--no-fused-loss")
    assert "fused loss: on" in fused_log and "fused loss: on" not in plain_log
    a = [r["loss"] for r in fused if "loss" in r]
    b = [r["loss"] for r in plain if "loss" in r]
    assert len(a) == 4 and all(abs(x - y) < 1e-5 for x, y in zip(a, b, strict=True)), (a, b)
    eval_a = [r["eval_loss"] for r in fused if "eval_loss" in r]
    eval_b = [r["eval_loss"] for r in plain if "eval_loss" in r]
    assert eval_a and abs(eval_a[-1] - eval_b[-1]) < 1e-5
