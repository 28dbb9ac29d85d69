"""Stacks of failed ranks in the run directory, and the summary that names where they stood."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from scaling.launch import stacks


def _wait_in_collective(output, rank, step):
    try:
        _fake_all_reduce()
    except RuntimeError as err:
        stacks.dump_failure(output, rank, step, err)


def _fake_all_reduce():
    raise RuntimeError("[gloo] Timed out waiting 5000ms for recv operation to complete")


def test_failed_ranks_leave_their_stacks_and_the_summary_names_the_silent_one(tmp_path):
    stacks.arm(tmp_path, 0)
    _wait_in_collective(tmp_path, 0, 7)
    stacks.disarm(0)
    text = stacks.stack_path(tmp_path, 0).read_text()
    assert "rank 0 failed at step 7: RuntimeError" in text and "_fake_all_reduce" in text
    assert "every thread at the failure" in text and "Current thread" in text  # faulthandler's dump
    summary = stacks.summary(tmp_path, 3)
    assert "rank 0 stood at step 7 in test_launch_stacks._wait_in_collective" not in summary  # not ours
    assert "rank 0 stood at step 7 in unknown" in summary
    assert "rank 1, 2 left no stack" in summary


def test_the_rank_whose_stack_differs_is_named(tmp_path):
    frame = 'File "' + str(Path(stacks.__file__).parents[1]) + '/engine/{m}.py", line 3, in {f}\n'
    for rank, (module, func) in enumerate([("layout", "agree"), ("layout", "agree"), ("trainer", "save")]):
        path = stacks.stack_path(tmp_path, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"== rank {rank} failed at step 4: X\n"
            + frame.format(m=module, f=func)
            + 'File "/v/site-packages/deepspeed/runtime/utils.py", line 9, in all_gather_dp_groups\n'
        )
    summary = stacks.summary(tmp_path, 3)
    assert "rank 0, 1 stood at step 4 in layout.agree > utils.all_gather_dp_groups" in summary
    assert "rank 2's stack differs: it was in trainer.save > utils.all_gather_dp_groups" in summary
    stacks.clear(tmp_path)
    assert stacks.summary(tmp_path, 3) == ""


def test_sigusr1_dumps_a_live_rank_stack(tmp_path):
    stacks.arm(tmp_path, 5)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.1)
    finally:
        stacks.disarm(5)
    assert "test_sigusr1_dumps_a_live_rank_stack" in stacks.stack_path(tmp_path, 5).read_text()
