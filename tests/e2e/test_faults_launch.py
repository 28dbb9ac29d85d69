"""Bounded failure through the real launcher chain (scaling launch -> deepspeed runner -> launch.py -> ranks):
SIGTERM saves and exits 75, kill -9 of a rank ends every process within seconds and names the rank, a hung
rank ends the job within the collective timeout, and every interruption resumes to the exact losses of an
uninterrupted run (float.hex of every step's loss)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from fixtures.launch.helpers import (
    SCALING,
    kill_tree,
    leftovers,
    losses,
    rank_process,
    start,
    train_args,
    wait_for_step,
)
from harness import free_port, run_ranks
from ranks import train_cli

pytestmark = pytest.mark.slow

# Long enough that on a fast, idle machine the run cannot finish between reaching a step and the signal.
STEPS = 40
KILL_BOUND_S = 15.0
"""kill -9 of a rank: the peer sees the closed connection at once, launch.py polls every second."""


def launch(out, corpus, tok, *extra, dist_timeout="20", save_every="2"):
    return [
        *SCALING, "launch", "--num-gpus", "2", "--master-port", str(free_port()), "--no-preflight", "--",
        "train", *train_args(out, corpus, tok, STEPS, "--save-every", save_every, "--dist-timeout", dist_timeout, *extra),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(small_corpus, clm_tokenizer, tmp_path_factory):
    """The uninterrupted 2-rank run (in-process ranks), step -> loss_hex."""
    out = tmp_path_factory.mktemp("reference") / "run"
    rank0, _ = run_ranks(
        train_cli, 2, train_args(out, small_corpus, clm_tokenizer, STEPS, "--save-every", "2")
    )
    assert rank0["exit"] == 0
    result = losses(out)
    assert sorted(result) == list(range(1, STEPS + 1))
    return result


def test_sigterm_saves_exits_75_then_kill9_is_bounded_and_resume_is_exact(
    tmp_path, small_corpus, clm_tokenizer, reference
):
    out = tmp_path / "run"
    # 1. SIGTERM to every process of the job, as Slurm sends it on preemption: launch.py then SIGTERMs its
    # ranks itself and exits 1, the runner dies at once; the ranks save at the next step boundary and their
    # reports make `scaling launch` exit 75 all the same. (SIGTERM to `scaling launch` alone: test_launch_supervise)
    proc = start(launch(out, small_corpus, clm_tokenizer), tmp_path / "a.log")
    try:
        wait_for_step(out, 2, proc)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 75, (tmp_path / "a.log").read_text()[-3000:]
    finally:
        kill_tree(proc)
    log = (tmp_path / "a.log").read_text()
    assert "preempted: every rank stopped after step" in log
    saved = int((out / "checkpoints" / "latest").read_text().strip().split("-")[-1])
    assert 2 <= saved < STEPS - 4
    assert leftovers(str(out)) == []

    # 2. Resume, then kill -9 one rank: every process ends within the bound, the log names the rank and step.
    proc = start(launch(out, small_corpus, clm_tokenizer, "--resume", "auto"), tmp_path / "b.log")
    try:
        wait_for_step(out, saved + 2, proc)
        rank_process(proc.pid, 1).kill()
        killed = time.monotonic()
        code = proc.wait(timeout=60)
        took = time.monotonic() - killed
    finally:
        kill_tree(proc)
    log = (tmp_path / "b.log").read_text()
    assert code not in (0, 75), log[-3000:]
    assert took < KILL_BOUND_S, f"took {took:.1f} s to end after kill -9"
    # Rank 1 is named; rank 0 reports where it was when its collective fails, unless DeepSpeed's launch.py,
    # which ends every rank once one exits non-zero, kills it first (a race: then it is named as well).
    assert "rank 1 stopped without a report" in log or "rank 0, 1 stopped without a report" in log, log[
        -3000:
    ]
    assert ("rank 0 on" in log and "at step" in log) or "rank 0, 1 stopped without a report" in log
    assert leftovers(str(out)) == []
    print(f"kill -9 of rank 1: launch exited rc {code} after {took:.1f} s")

    # 3. Resume again: it finishes with the losses of the uninterrupted run, step for step, bit for bit.
    proc = start(launch(out, small_corpus, clm_tokenizer, "--resume", "auto"), tmp_path / "c.log")
    try:
        assert proc.wait(timeout=240) == 0, (tmp_path / "c.log").read_text()[-3000:]
    finally:
        kill_tree(proc)
    assert losses(out) == reference


def test_hung_rank_ends_the_job_within_the_collective_timeout(tmp_path, small_corpus, clm_tokenizer):
    out = tmp_path / "run"
    timeout = 5.0
    # No saves: a checkpoint write is allowed the long start-up timeout (ranks legitimately wait on it).
    argv = launch(out, small_corpus, clm_tokenizer, dist_timeout=str(timeout), save_every="0")
    proc = start(argv, tmp_path / "h.log")
    stopped = None
    try:
        wait_for_step(out, 2, proc)
        stopped = rank_process(proc.pid, 1)
        stopped.suspend()  # alive but silent: SIGSTOP
        hung = time.monotonic()
        code = proc.wait(timeout=120)
        took = time.monotonic() - hung
    finally:
        if stopped is not None and stopped.is_running():
            stopped.kill()
        kill_tree(proc)
    log = (tmp_path / "h.log").read_text()
    assert code != 0, log[-3000:]
    # the peer times out after `timeout`; launch.py then gives the frozen rank 30 s before SIGKILL
    assert took < timeout + 30 + 20, f"took {took:.1f} s"
    assert "rank 0 failed at step" in log and "Timed out" in log, log[-3000:]
    assert "rank 1 stopped without a report" in log
    assert leftovers(str(out)) == []
    print(f"SIGSTOP of rank 1 with --dist-timeout {timeout}: launch exited rc {code} after {took:.1f} s")
