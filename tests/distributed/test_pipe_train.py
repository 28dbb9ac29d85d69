"""Pipeline x data parallelism on 4 ranks through `scaling train`, and the export's round trip."""

from __future__ import annotations

from harness import run_ranks
from ranks import train_cli
from ranks_parallel import exported_eval_loss


def test_pp2_x_dp2_trains_and_exports(tmp_path, small_corpus, clm_tokenizer):
    out = tmp_path / "run"
    # Eval lines of distinct lengths: the two replicas' batches hold different numbers of targets, so only a
    # token-weighted eval loss matches the exported model's.
    words = small_corpus.read_text(encoding="utf-8").split()
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(
        "\n".join(" ".join(words[i * 20 : i * 20 + n]) for i, n in enumerate(range(2, 18, 2)))
    )
    args = [
        "--model", "tiny-gpt2", "--data", str(small_corpus), "--eval-data", str(held_out),
        "--eval-batches", "2", "--tokenizer", str(clm_tokenizer), "--output", str(out),
        "--ds-config", "pipeline", "--pipeline-stages", "2", "--partition-method", "type:GPT2Block", "--no-packing",
        "--precision", "fp32", "--seq-len", "32", "--micro-batch", "2", "--grad-accum", "2", "--lr", "3e-3",
        "--max-steps", "12", "--log-every", "4", "--no-progress", "--no-tensorboard",
    ]  # fmt: skip
    results = run_ranks(train_cli, 4, args)
    assert [r["exit"] for r in results] == [0, 0, 0, 0]
    records = results[0]["records"]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.2, losses
    logged = next(r["eval_loss"] for r in reversed(records) if "eval_loss" in r)
    # the stages merged back into one HF model compute the pipeline's eval loss
    assert abs(exported_eval_loss(str(out), token_weighted=True) - logged) <= 1e-5 * logged
