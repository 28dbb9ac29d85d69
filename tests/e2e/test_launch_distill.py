"""`scaling launch -- distill` through the real launcher chain (scaling launch -> deepspeed runner -> launch.py
-> `python -m scaling.rank distill`): the same launch plan as training, so SIGTERM saves and exits 75 with every
rank's report, nothing is left running, and `--resume auto` finishes the distillation."""

from __future__ import annotations

import os
import signal

import pytest
from fixtures.launch.helpers import SCALING, kill_tree, leftovers, losses, start, wait_for_step
from harness import free_port
from ranks_distill import make_model

from scaling.launch.status import PREEMPTED, read_reports

pytestmark = pytest.mark.slow

STEPS = 20


def launch(out, teacher, corpus, *extra):
    return [
        *SCALING, "launch", "--num-gpus", "2", "--master-port", str(free_port()), "--no-preflight", "--",
        "distill", "--teacher", str(teacher), "--student-layers", "2", "--task", "clm", "--data", str(corpus),
        "--output", str(out), "--ds-config", "zero2", "--precision", "fp32", "--seq-len", "32",
        "--micro-batch", "2", "--lr", "3e-3", "--max-steps", str(STEPS), "--log-every", "1", "--save-every", "2",
        "--no-progress", "--no-tensorboard", *extra,
    ]  # fmt: skip


def test_distill_launch_sigterm_exits_75_then_resumes_to_the_end(tmp_path, small_corpus, clm_tokenizer):
    teacher = make_model("llama", "clm", clm_tokenizer, tmp_path / "teacher", layers=4)
    out = tmp_path / "run"
    proc = start(launch(out, teacher, small_corpus), tmp_path / "a.log")
    try:
        wait_for_step(out, 2, proc)
        os.killpg(proc.pid, signal.SIGTERM)  # as Slurm sends it on preemption: to every process of the job
        assert proc.wait(timeout=120) == 75, (tmp_path / "a.log").read_text()[-3000:]
    finally:
        kill_tree(proc)
    log = (tmp_path / "a.log").read_text()
    assert "-m scaling.rank" in log or "--module scaling.rank" in log
    assert "preempted: every rank stopped after step" in log, log[-3000:]
    reports = read_reports(out)
    assert sorted(r.rank for r in reports) == [0, 1] and {r.kind for r in reports} == {PREEMPTED}
    assert leftovers(str(out)) == []

    proc = start(launch(out, teacher, small_corpus, "--resume", "auto"), tmp_path / "b.log")
    try:
        assert proc.wait(timeout=300) == 0, (tmp_path / "b.log").read_text()[-3000:]
    finally:
        kill_tree(proc)
    assert sorted(losses(out)) == list(range(1, STEPS + 1))
    assert (out / "final" / "config.json").is_file()  # the student, exported
    assert leftovers(str(out)) == []
