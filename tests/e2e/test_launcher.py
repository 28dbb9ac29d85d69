"""True end-to-end runs through the real `deepspeed` launcher (separate processes, --local_rank appended)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import free_port

REPO = Path(__file__).resolve().parents[2]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def train_args(out: Path, corpus: Path, tokenizer: Path) -> list[str]:
    return [
        "--model", "tiny-gpt2", "--data", str(corpus), "--tokenizer", str(tokenizer), "--output", str(out),
        "--precision", "fp32", "--seq-len", "32", "--micro-batch", "2", "--lr", "3e-3", "--max-steps", "10",
        "--log-every", "5", "--save-every", "5", "--no-progress",
    ]  # fmt: skip


def losses(out: Path) -> list[str]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss_hex"] for line in lines if "loss_hex" in line]


def test_deepspeed_launcher_runs_launchers_train(tmp_path, small_corpus, clm_tokenizer):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
           "launchers/train.py", *train_args(out, small_corpus, clm_tokenizer)]  # fmt: skip
    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "--local_rank=1" in proc.stdout + proc.stderr  # the launcher really appended it
    assert len(losses(out)) == 2
    assert (out / "final" / "model.safetensors").is_file()
    assert (out / "tensorboard").is_dir() and any((out / "tensorboard").iterdir())
    assert json.loads((out / "run_config.json").read_text())["world_size"] == 2

    # `scaling train --num-gpus 2` resolves on this host and hands the same run to the launcher
    out2 = tmp_path / "scaling"
    proc = run(
        [
            sys.executable,
            "-m",
            "scaling",
            "train",
            "--num-gpus",
            "2",
            *train_args(out2, small_corpus, clm_tokenizer),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "--resolved-config" in proc.stderr
    assert losses(out2) == losses(out)  # same data, seed and world: the same run, bit for bit


def test_deepspeed_launcher_runs_launchers_distill(tmp_path, small_corpus, clm_tokenizer):
    from ranks_distill import make_model

    teacher = make_model("llama", "clm", clm_tokenizer, tmp_path / "teacher", layers=4)
    distill_args = [
        "--teacher", str(teacher), "--student-layers", "2", "--task", "clm", "--data", str(small_corpus),
        "--precision", "fp32", "--seq-len", "32", "--micro-batch", "2", "--lr", "3e-3", "--max-steps", "6",
        "--log-every", "3", "--save-every", "3", "--ds-config", "zero2", "--no-progress", "--no-tensorboard",
    ]  # fmt: skip
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
           "launchers/distill.py", *distill_args, "--output", str(out)]  # fmt: skip
    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "--local_rank=1" in proc.stdout + proc.stderr
    assert len(losses(out)) == 2
    student = json.loads((out / "final" / "config.json").read_text())
    assert student["num_hidden_layers"] == 2
    assert (out / "checkpoints" / "step-00000006" / "scaling" / "distill_config.json").is_file()

    # `scaling compress distill --num-gpus 2` resolves here and hands the same run to the launcher
    out2 = tmp_path / "scaling"
    proc = run([sys.executable, "-m", "scaling", "compress", "distill", "--num-gpus", "2", *distill_args,
                "--output", str(out2)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert losses(out2) == losses(out)
