"""Distillation from a ZeRO-3 teacher on 2 ranks: the teacher runs in its own DeepSpeed engine, partitioned
across the ranks, and a resumed distillation continues exactly (every loss bit-identical)."""

from __future__ import annotations

import json

from harness import run_ranks
from ranks_distill import distill_cli, held_out_kl, make_model, teacher_partitioning

N = 5


def loss_hex(records):
    return {r["step"]: r["loss_hex"] for r in records if "loss_hex" in r}


def test_zero3_teacher_partitioned_and_resume_exact(tmp_path, small_corpus, clm_tokenizer):
    teacher = make_model("llama", "clm", clm_tokenizer, tmp_path / "teacher", layers=4)
    # A narrower student: its hidden states reach the teacher's through a trained projection, whose weights
    # and optimizer state (outside DeepSpeed) must come back exactly after a resume too.
    student = make_model(
        "llama", "clm", clm_tokenizer, tmp_path / "student", layers=2, width=16, seed=1, init=0.02
    )

    def args_for(out, *more):
        return ["--teacher", str(teacher), "--student", str(student), "--task", "clm", "--data", str(small_corpus),
                "--output", str(out), "--ds-config", "zero3", "--precision", "fp32", "--seq-len", "32",
                "--micro-batch", "2", "--grad-accum", "2", "--lr", "1e-2", "--warmup-steps", "1",
                "--max-steps", str(2 * N), "--log-every", "1", "--alpha", "0.5", "--hidden-loss", "0.05",
                "--save-every", str(N), "--no-progress", "--no-tensorboard", *more]  # fmt: skip

    straight = run_ranks(
        teacher_partitioning,
        2,
        args_for(tmp_path / "a", "--eval-data", str(small_corpus), "--eval-batches", "2"),
    )
    for info in straight:
        assert info["engine"] == "DeepSpeedEngine"
        assert not info["requires_grad"]
        # Each rank holds about half of the teacher; the whole is only known through ds_numel.
        assert info["local_numel"] <= 0.55 * info["full_numel"], info
        assert info["eval"]["eval_kd_loss"] > 0
    assert straight[0]["local_numel"] + straight[1]["local_numel"] >= straight[0]["full_numel"]
    assert straight[0]["eval"] == straight[1]["eval"]
    assert (tmp_path / "a" / "final" / "model.safetensors").is_file()

    first = run_ranks(distill_cli, 2, args_for(tmp_path / "b", "--halt-at-step", str(N), "--no-export"))[0]
    second = run_ranks(distill_cli, 2, args_for(tmp_path / "b", "--resume", "auto", "--no-export"))[0]
    assert first["exit"] == second["exit"] == 0
    # every checkpoint names its objective in plain JSON, beside run_config.json
    saved = json.loads(
        (tmp_path / "b" / "checkpoints" / f"step-{N:08d}" / "scaling" / "distill_config.json").read_text()
    )
    assert (saved["alpha"], saved["hidden_loss"], saved["teacher"]) == (0.5, 0.05, str(teacher))
    full, resumed = loss_hex(straight[0]["records"]), loss_hex(second["records"])
    assert sorted(full) == list(range(1, 2 * N + 1))
    assert {s: full[s] for s in range(1, N + 1)} == loss_hex(first["records"])
    assert {s: full[s] for s in range(N + 1, 2 * N + 1)} == {s: resumed[s] for s in range(N + 1, 2 * N + 1)}
    curve = [float.fromhex(full[s]) for s in sorted(full)]
    assert curve[-1] < curve[0], curve
    texts = small_corpus.read_text(encoding="utf-8").splitlines()[-16:]
    assert held_out_kl(teacher, tmp_path / "a" / "final", "clm", texts) < held_out_kl(
        teacher, student, "clm", texts
    )
