"""Early stopping on the eval loss: the run stops after `patience` evaluations without a new best, the best
checkpoint survives retention and is what OUTPUT/final holds; plus what every run leaves to watch it by
(metrics.csv, the loss plot)."""

from __future__ import annotations

import csv

import torch
from harness import run_ranks
from ranks_watch import train_with_scripted_eval
from safetensors.torch import load_file

from scaling.checkpoint.export import export_checkpoint

# evaluations every 2 steps: new bests at 2 and 4, then three without one -> stop at step 10 (patience 3)
EVAL = {2: 3.0, 4: 2.0, 6: 2.5, 8: 2.0, 10: 2.6, 12: 1.0, 14: 1.0, 16: 1.0}


def test_early_stopping_keeps_and_exports_the_best_checkpoint(tmp_path, small_corpus, clm_tokenizer):
    out = tmp_path / "run"
    args = [
        "--model", "tiny-llama", "--data", str(small_corpus), "--tokenizer", str(clm_tokenizer),
        "--output", str(out), "--precision", "fp32", "--seq-len", "32", "--micro-batch", "2", "--lr", "3e-3",
        "--max-steps", "16", "--log-every", "1", "--no-progress", "--no-tensorboard", "--ds-config", "zero1",
        "--eval-data", str(small_corpus), "--eval-every", "2", "--eval-batches", "1",
        "--early-stop-patience", "3", "--save-every", "2", "--keep-last", "1", "--report-to", "csv",
    ]  # fmt: skip
    result = run_ranks(train_with_scripted_eval, 2, args, EVAL)[0]
    assert result["exit"] == 0, result["message"]
    steps = [r["step"] for r in result["records"] if "loss" in r]
    assert steps[-1] == 10  # stopped: 6, 8 (2.0 is not below 2.0) and 10 brought no new best
    checkpoints = out / "checkpoints"
    assert (checkpoints / "best").read_text().strip() == "step-00000004"
    # --keep-last 1 kept the newest (step 10) and, pinned, the best; nothing in between
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000004", "step-00000010"]
    best = export_checkpoint(checkpoints / "step-00000004", tmp_path / "best-export")
    last = export_checkpoint(checkpoints / "step-00000010", tmp_path / "last-export")
    final = load_file(str(out / "final" / "model.safetensors"))
    expected = load_file(str(best / "model.safetensors"))
    other = load_file(str(last / "model.safetensors"))
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in final)
    assert not all(torch.equal(final[k], other[k]) for k in final)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [float(r["eval_loss"]) for r in rows if r["eval_loss"]] == [3.0, 2.0, 2.5, 2.0, 2.6]
    assert (out / "plots" / "loss.png").stat().st_size > 10_000
