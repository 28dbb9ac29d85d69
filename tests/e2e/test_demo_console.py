"""`make demo`'s console (a shortened `scaling demo`: 2 ranks, preempted half-way, resumed, exported,
generated from, quantized) shows our lines and no third-party warning; what was filtered is in the run's
log files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# Shapes of third-party warnings, not the messages we filter: a new one of any library shows up here.
THIRD_PARTY_WARNING = re.compile(
    r"\w+Warning\b"  # Python warnings: FutureWarning, UserWarning, DeprecationWarning, TracerWarning...
    r"|\[(WARNING|ERROR)\]"  # DeepSpeed's and INC's logger formats
    r"|^(\[rank\d+\]:)?[WE]\d{4} \d\d:\d\d"  # torch's glog-style lines
    r"|Failed to load|deprecated|Setting CUDA_VISIBLE_DEVICES|exits with return code"
)


def test_demo_console_shows_no_third_party_warnings(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "scaling", "demo", "--output", str(out), "--steps", "8"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )  # fmt: skip
    console = done.stdout
    assert done.returncode == 0, console[-5000:]
    lines = [line for line in re.split(r"[\r\n]", console) if line.strip()]
    offending = [line for line in lines if THIRD_PARTY_WARNING.search(line)]
    assert not offending, "\n".join(offending)
    for ours in (
        "resumed from step 4",
        "eval @ step 8: loss",
        "done: step 8",
        "linear weights",
        "Latency: median",
    ):
        assert ours in console, ours
    run = out / "run"
    launcher = (run / "logs" / "launcher.log").read_text()
    assert "Setting CUDA_VISIBLE_DEVICES" in launcher and "cmd = " in launcher  # filtered, not dropped
    rank0 = (run / "logs" / "rank-0.log").read_text()
    assert "all_gather_into_tensor" in rank0 and "Failed to load" in rank0
    assert (run / "plots" / "loss.png").is_file()
