"""kill -9 at any moment of a save leaves `latest` naming a complete, verifiable, loadable checkpoint."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scaling.checkpoint import store


def start_training(out: Path, corpus: Path, tokenizer: Path, max_steps: int, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable, "-m", "scaling", "train", "--model", "tiny-gpt2", "--data", str(corpus),
        "--tokenizer", str(tokenizer), "--output", str(out), "--precision", "fp32", "--seq-len", "32",
        "--micro-batch", "2", "--max-steps", str(max_steps), "--save-every", "1", "--keep-last", "2",
        "--log-every", "1", "--no-progress", "--no-tensorboard", "--no-export", *extra,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_save_in_progress(
    root: Path, proc: subprocess.Popen, after_commits: int, timeout: float = 120
) -> bool:
    """Poll until a step directory exists without its manifest, once step `after_commits` is committed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if root.is_dir():
            done = store.committed(root)
            in_flight = [d for d in partial_saves(root) if d.exists() and any(d.iterdir())]
            if done and done[-1].step >= after_commits and in_flight:
                return True
        time.sleep(0.001)
    return False


def partial_saves(root: Path) -> list[Path]:
    return [d for d in root.iterdir() if d.name.startswith(store.TAG_PREFIX) and not store.is_complete(d)]


@pytest.mark.parametrize("after_commits", [1, 3])
def test_kill_mid_save_keeps_latest_loadable(tmp_path, small_corpus, clm_tokenizer, after_commits):
    out = tmp_path / "run"
    root = out / "checkpoints"
    # The kill must land inside a save; the save can win the race against the signal, so try again
    # (resuming) until a partial save is left behind.
    for _attempt in range(5):
        proc = start_training(out, small_corpus, clm_tokenizer, 200, "--resume", "auto")
        try:
            caught = wait_for_save_in_progress(root, proc, after_commits)
            proc.send_signal(signal.SIGKILL)
        finally:
            _, err = proc.communicate(timeout=60)
        assert caught, f"never observed a save in progress:\n{err[-3000:]}"
        if partial_saves(root):
            break
    interrupted = partial_saves(root)
    assert interrupted, "no kill landed inside a save in 5 attempts"

    latest = store.read_latest(root)
    assert latest is not None and latest.step >= after_commits
    store.verify(latest.path, hashes=True)
    assert all(store.step_of(d.name) > latest.step for d in interrupted)  # only the save in flight

    # the run resumes from the newest commit (latest, or one after it when the kill fell between the manifest
    # and the rename of latest) and finishes; the partial directory is cleaned by the next commit
    chosen = store.resolve_resume("auto", root)
    assert chosen.step in (latest.step, latest.step + 1)
    proc = start_training(out, small_corpus, clm_tokenizer, chosen.step + 2, "--resume", "auto")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert f"resumed from step {chosen.step}" in err
    final = store.read_latest(root)
    assert final.step == chosen.step + 2
    assert partial_saves(root) == []


def test_random_kills_never_break_latest(tmp_path, small_corpus, clm_tokenizer):
    """After the first commit, kill -9 at random moments inside later saves (each run resumes the last);
    every time, `latest` and the checkpoint `--resume auto` picks are complete and verify, and never go back."""
    out = tmp_path / "run"
    root = out / "checkpoints"
    rng = random.Random(17)
    newest = 0
    for attempt in range(3):
        proc = start_training(out, small_corpus, clm_tokenizer, 400, "--resume", "auto")
        try:
            # a save later than every commit so far, already writing files
            caught = wait_for_save_in_progress(root, proc, after_commits=max(newest, 1))
            time.sleep(rng.uniform(0.0, 0.25))  # somewhere inside it (or just after its commit)
            proc.send_signal(signal.SIGKILL)
        finally:
            _, err = proc.communicate(timeout=60)
        assert caught, f"attempt {attempt}: never observed a save in progress:\n{err[-3000:]}"
        latest = store.read_latest(root)
        assert latest is not None, f"attempt {attempt}: no latest after the first commit"
        store.verify(latest.path, hashes=True)
        chosen = store.resolve_resume("auto", root)
        store.verify(chosen.path, hashes=True)
        assert chosen.step >= latest.step >= newest
        newest = chosen.step
