"""A hung rank (SIGSTOP) ends the job within the collective timeout and leaves a trail: every live rank's stack
in OUTPUT/stacks/, and a summary that names the step, where the live ranks stood and the rank that left none."""

from __future__ import annotations

import time

import pytest
from fixtures.launch.helpers import (
    SCALING,
    kill_tree,
    leftovers,
    rank_process,
    start,
    train_args,
    wait_for_step,
)
from harness import free_port

from scaling.launch import stacks

pytestmark = pytest.mark.slow


def test_sigstop_of_a_rank_leaves_every_live_rank_stack_and_names_the_silent_one(
    tmp_path, small_corpus, clm_tokenizer
):
    out = tmp_path / "run"
    timeout = 5.0
    argv = [
        *SCALING, "launch", "--num-gpus", "2", "--master-port", str(free_port()), "--no-preflight", "--",
        "train", *train_args(out, small_corpus, clm_tokenizer, 400, "--save-every", "0", "--dist-timeout", str(timeout)),
    ]  # fmt: skip
    proc = start(argv, tmp_path / "h.log")
    stopped = None
    try:
        wait_for_step(out, 2, proc)
        stopped = rank_process(proc.pid, 1)
        stopped.suspend()
        hung = time.monotonic()
        code = proc.wait(timeout=120)
        took = time.monotonic() - hung
    finally:
        if stopped is not None and stopped.is_running():
            stopped.kill()
        kill_tree(proc)
    log = (tmp_path / "h.log").read_text()
    assert code != 0, log[-3000:]
    stack = stacks.stack_path(out, 0).read_text()
    assert "rank 0 failed at step" in stack and "Timed out" in stack
    assert "every thread at the failure" in stack
    assert "rank 0 stood at step" in log, log[-3000:]
    assert "rank 1 left no stack" in log
    assert leftovers(str(out)) == []
    print(f"SIGSTOP of rank 1: stacks and summary after {took:.1f} s")
