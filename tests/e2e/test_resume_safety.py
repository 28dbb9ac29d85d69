"""Damaged or missing resume state never costs work: `--resume auto` finds the newest sound checkpoint (latest
missing, a file truncated), damaged ones go to checkpoints/corrupt/, retention keeps the sound ones, metrics
hold every step once; `--resume PATH` to a damaged checkpoint and a fresh run into a used directory exit 2
before training; a corrupt shard found by rank 1 redirects or ends the whole job in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import run_ranks
from ranks_resume import train_verified_by_ranks

from scaling.checkpoint import resume, store

pytestmark = pytest.mark.slow


def train_args(out: Path, corpus: Path, tokenizer: Path, *extra: str) -> list[str]:
    return [
        "--model", "tiny-gpt2", "--data", str(corpus), "--tokenizer", str(tokenizer), "--output", str(out),
        "--precision", "fp32", "--seq-len", "32", "--micro-batch", "2", "--max-steps", "20", "--save-every", "4",
        "--keep-last", "3", "--log-every", "1", "--no-progress", "--no-tensorboard", "--no-export", *extra,
    ]  # fmt: skip


def scaling_train(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    argv = [sys.executable, "-m", "scaling", "train", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)


def logged_steps(out: Path) -> list[int]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)]


def flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(
        b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 16]
    )
    path.write_bytes(bytes(data))


def test_missing_latest_corrupt_latest_path_to_corrupt_and_fresh_run_into_used_dir(
    tmp_path, small_corpus, clm_tokenizer
):
    out = tmp_path / "run"
    root = out / "checkpoints"
    args = train_args(out, small_corpus, clm_tokenizer)

    first = scaling_train(*args, "--halt-at-step", "8")
    assert first.returncode == 0, first.stderr[-3000:]
    # A kill between the manifest and the rename of `latest`: the pointer is gone, its temp file left behind.
    (root / store.LATEST).unlink()
    (root / ".latest.tmp.99999").write_text(store.tag_for(8) + "\n")

    second = scaling_train(*args, "--resume", "auto", "--halt-at-step", "16")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from step 8" in second.stderr  # not a silent start from step 0
    assert not list(root.glob(".latest.tmp.*"))
    assert [r.step for r in store.committed(root)] == [8, 12, 16]

    # The newest checkpoint loses the end of a file: the resume skips it with one notice and moves it aside.
    shard = root / store.tag_for(16) / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[:-4096])
    third = scaling_train(*args, "--resume", "auto")
    assert third.returncode == 0, third.stderr[-3000:]
    notices = [line for line in third.stderr.splitlines() if "skipping step-00000016" in line]
    assert len(notices) == 1 and "truncated" in notices[0], third.stderr[-3000:]
    assert "resumed from step 12" in third.stderr
    assert (root / "corrupt" / store.tag_for(16) / "mp_rank_00_model_states.pt").is_file()
    assert [r.step for r in store.committed(root)] == [12, 16, 20]  # retention kept the sound ones
    for ref in store.committed(root):
        store.verify(ref.path, hashes=True)
    assert logged_steps(out) == list(range(1, 21))  # every step once, none of the abandoned 13-16 twice

    # --resume PATH to a damaged checkpoint: exit 2 before training, with the command for the previous one.
    flip_middle(root / store.tag_for(20) / "mp_rank_00_model_states.pt")
    metrics = (out / "metrics.jsonl").read_text()
    started = time.monotonic()
    refused = scaling_train(*args, "--resume", str(root / store.tag_for(20)), "--max-steps", "24")
    took = time.monotonic() - started
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "does not match its sha256" in refused.stderr
    assert f"--resume {root / store.tag_for(16)}" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (out / "metrics.jsonl").read_text() == metrics  # no rank started

    # A fresh run (no --resume) into the directory: refused, nothing touched.
    fresh = scaling_train(*args)
    assert fresh.returncode == 2, fresh.stderr[-3000:]
    assert "--resume auto" in fresh.stderr and "--overwrite" in fresh.stderr
    assert [r.step for r in store.committed(root)] == [12, 16, 20]
    print(f"--resume PATH to a damaged checkpoint refused in {took:.1f} s")


def test_corrupt_shard_found_by_rank_1_redirects_auto_and_ends_path_in_seconds(
    tmp_path, small_corpus, clm_tokenizer
):
    out = tmp_path / "run"
    root = out / "checkpoints"
    args = [*train_args(out, small_corpus, clm_tokenizer, "--ds-config", "zero2"), "--max-steps", "8"]
    args[args.index("--save-every") + 1] = "2"

    rank0, _ = run_ranks(train_verified_by_ranks, 2, [*args, "--halt-at-step", "4"])
    assert rank0["exit"] == 0, rank0["message"]
    newest = root / store.tag_for(4)
    manifest = json.loads((newest / store.MANIFEST).read_text())
    sizes = {rel: meta["size"] for rel, meta in manifest["files"].items()}
    shard = next(rel for rel in sizes if rel.startswith("zero_pp_rank_1_"))  # rank 1's optimizer shard
    assert shard in resume.hash_shares(sizes, 2)[1]  # rank 1 verifies what it loads
    flip_middle(newest / shard)  # same size: only a hash sees it

    # --resume auto: both ranks agree, the damaged checkpoint moves aside, the run continues from step 2.
    redirected = run_ranks(train_verified_by_ranks, 2, [*args, "--resume", "auto"])
    assert [r["exit"] for r in redirected] == [0, 0], redirected[0]["message"]
    steps = [r["step"] for r in redirected[0]["records"] if "loss" in r]
    assert steps == list(range(1, 9))
    assert (root / "corrupt" / store.tag_for(4) / shard).is_file()
    assert (
        f"rank 1: {newest}: file {shard}" in (root / "corrupt" / f"{store.tag_for(4)}.reason.txt").read_text()
    )

    # --resume PATH to a damaged checkpoint: every rank ends with exit 2 in seconds, no hang to --init-timeout.
    flip_middle(root / store.tag_for(8) / shard)
    ended = run_ranks(
        train_verified_by_ranks, 2, [*args, "--resume", str(root / store.tag_for(8))], timeout=120
    )
    assert [r["exit"] for r in ended] == [2, 2]
    assert "rank 1 verified" in ended[0]["message"] and "does not match its sha256" in ended[0]["message"]
    assert max(r["seconds"] for r in ended) < 60
    print(
        f"damaged shard on rank 1 with --resume PATH: every rank ended in {max(r['seconds'] for r in ended):.1f} s"
    )
