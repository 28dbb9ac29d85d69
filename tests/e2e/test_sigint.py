"""SIGINT to the launcher process alone (what a scheduler or a terminal that signals one PID sends) is a
preemption like SIGTERM: the ranks save at the next step boundary, the run exits 75, `--resume auto` continues
to the losses of an uninterrupted run; a single-process run does the same. (A second SIGINT stopping at once:
tests/unit/test_checkpoint_resume.py, the save after the first is faster than any second signal here.)"""

from __future__ import annotations

import os
import signal

import pytest
from fixtures.launch.helpers import SCALING, kill_tree, leftovers, losses, start, train_args, wait_for_step
from harness import free_port, run_ranks
from ranks import train_cli

from scaling.checkpoint import store

pytestmark = pytest.mark.slow

STEPS = 16


def launch(out, corpus, tok, *extra):
    return [
        *SCALING, "launch", "--num-gpus", "2", "--master-port", str(free_port()), "--no-preflight", "--",
        "train", *train_args(out, corpus, tok, STEPS, "--save-every", "4", *extra),
    ]  # fmt: skip


def test_sigint_to_scaling_launch_saves_exits_75_and_resumes_exactly(tmp_path, small_corpus, clm_tokenizer):
    reference_out = tmp_path / "reference"
    rank0, _ = run_ranks(
        train_cli, 2, train_args(reference_out, small_corpus, clm_tokenizer, STEPS, "--save-every", "4")
    )
    assert rank0["exit"] == 0, rank0["message"]
    reference = losses(reference_out)

    out = tmp_path / "run"
    proc = start(launch(out, small_corpus, clm_tokenizer), tmp_path / "a.log")
    try:
        wait_for_step(out, 2, proc)
        os.kill(proc.pid, signal.SIGINT)  # the launcher's PID only: it runs in its own session
        code = proc.wait(timeout=180)
    finally:
        kill_tree(proc)
    log = (tmp_path / "a.log").read_text()
    assert code == 75, log[-3000:]
    assert "preempted: every rank stopped after step" in log
    saved = store.read_latest(out / "checkpoints")
    assert saved is not None and 2 <= saved.step < STEPS
    assert leftovers(str(out)) == []

    proc = start(launch(out, small_corpus, clm_tokenizer, "--resume", "auto"), tmp_path / "b.log")
    try:
        assert proc.wait(timeout=240) == 0, (tmp_path / "b.log").read_text()[-3000:]
    finally:
        kill_tree(proc)
    assert f"resumed from step {saved.step}" in (tmp_path / "b.log").read_text()
    assert losses(out) == reference  # every step, bit for bit


def test_sigint_to_a_single_process_run_saves_and_exits_75(tmp_path, small_corpus, clm_tokenizer):
    out = tmp_path / "run"
    argv = [*SCALING, "train", *train_args(out, small_corpus, clm_tokenizer, 400, "--save-every", "0")]
    proc = start(argv, tmp_path / "a.log")
    try:
        wait_for_step(out, 2, proc)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        kill_tree(proc)
    log = (tmp_path / "a.log").read_text()
    assert code == 75, log[-3000:]
    saved = store.read_latest(out / "checkpoints")
    assert saved is not None and saved.step >= 2
    store.verify(saved.path)
