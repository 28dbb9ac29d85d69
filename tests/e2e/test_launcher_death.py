"""Ranks whose launcher dies stop within a bound, saving first: SIGTERM to a directly started `deepspeed` runner
(it dies without passing the signal on; launch.py, orphaned, keeps waiting) and kill -9 of `scaling launch`
(which can pass nothing on). Before the launcher watch both left the ranks training to the end."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from fixtures.launch.helpers import (
    SCALING,
    kill_tree,
    launch_env,
    leftovers,
    start,
    train_args,
    wait_for_step,
)
from harness import free_port

pytestmark = pytest.mark.slow

STEPS = 400
"""Far more than the test lets run: a rank that ignored its launcher's death would still be training."""
STOP_BOUND_S = 90.0
"""Noticing (1 s poll), the step in flight, one checkpoint and the teardown, on a loaded 2-core machine
(measured 4.8-23 s); a rank that ignored the death would train its 400 steps for several minutes."""
DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))


def _wait_gone(out: Path, since: float) -> float:
    """Seconds from `since` until no process of the run (ranks, launch.py, runner) is left."""
    deadline = since + STOP_BOUND_S
    while time.monotonic() < deadline:
        if not leftovers(str(out)):
            return time.monotonic() - since
        time.sleep(0.2)
    raise AssertionError(f"still running {STOP_BOUND_S:.0f} s after the launcher died: {leftovers(str(out))}")


def _assert_saved_and_reported(out: Path, reached: int) -> int:
    saved = int((out / "checkpoints" / "latest").read_text().strip().split("-")[-1])
    assert reached <= saved < STEPS
    reports = [json.loads(p.read_text()) for p in sorted((out / "reports").glob("rank-*.json"))]
    assert [(r["rank"], r["kind"], r["step"]) for r in reports] == [
        (0, "preempted", saved),
        (1, "preempted", saved),
    ]
    return saved


def test_sigterm_to_a_direct_deepspeed_runner_stops_and_saves(tmp_path, small_corpus, clm_tokenizer):
    out = tmp_path / "run"
    argv = [
        DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "--module", "scaling.rank", "train",
        *train_args(out, small_corpus, clm_tokenizer, STEPS, "--save-every", "0"),
    ]  # fmt: skip
    proc = start(argv, tmp_path / "ds.log", launch_env())
    try:
        wait_for_step(out, 2, proc)
        proc.send_signal(
            signal.SIGTERM
        )  # the runner alone, as `kill PID` or a scheduler that signals one PID
        signalled = time.monotonic()
        assert proc.wait(timeout=10) != 0  # it dies at once, leaving launch.py and the ranks behind
        took = _wait_gone(out, signalled)
    finally:
        kill_tree(proc)
    log = (tmp_path / "ds.log").read_text()
    assert "is gone: stopping as on SIGTERM" in log, log[-3000:]
    saved = _assert_saved_and_reported(out, 2)
    print(f"SIGTERM to the deepspeed runner: ranks saved step {saved} and ended {took:.1f} s later")


def test_kill9_of_scaling_launch_stops_and_saves(tmp_path, small_corpus, clm_tokenizer):
    out = tmp_path / "run"
    argv = [
        *SCALING, "launch", "--num-gpus", "2", "--master-port", str(free_port()), "--no-preflight", "--",
        "train", *train_args(out, small_corpus, clm_tokenizer, STEPS, "--save-every", "0"),
    ]  # fmt: skip
    proc = start(argv, tmp_path / "launch.log", launch_env())
    try:
        wait_for_step(out, 2, proc)
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=10)
        took = _wait_gone(out, killed)  # the ranks, and with them launch.py and the runner
    finally:
        kill_tree(proc)
    saved = _assert_saved_and_reported(out, 2)
    print(f"kill -9 of scaling launch: ranks saved step {saved} and ended {took:.1f} s later")
