"""Bad input through the real `deepspeed` launcher: every rank refuses it before any process group, exit 2,
one message, no traceback (it used to start the ranks and fail ~26 s later with 108 lines of tracebacks)."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import free_port

from scaling.config.device import cuda_available

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.mark.skipif(cuda_available(), reason="fp16 on a machine without a GPU")
def test_fp16_on_cpu_through_the_deepspeed_launcher_exits_2_without_traceback(
    tmp_path, small_corpus, clm_tokenizer
):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
           "launchers/train.py", "--model", "tiny-gpt2", "--data", str(small_corpus), "--tokenizer",
           str(clm_tokenizer), "--output", str(out), "--max-steps", "2", "--precision", "fp16"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-4000:]
    assert "Traceback" not in output
    assert "fp16 (option --precision) needs a GPU" in output
    assert not (out / "run_config.json").exists()  # no rank got as far as preparing the run
    # Each rank refuses before its process group: from the launcher spawning the ranks to their end, only
    # their imports and the check (~20 s on 2 busy cores; it was ~26 s and then 108 lines of tracebacks).
    spawned, ended = _stamp(output, "spawned with command"), _stamp(output, "exits with return code")
    assert (ended - spawned).total_seconds() < 90, (spawned, ended)
    assert elapsed < 280, elapsed  # the launcher's own start-up is the rest


def _stamp(output: str, marker: str) -> datetime.datetime:
    """The time DeepSpeed's launcher logged the first line with `marker` (`[2026-12-01 02:01:49,990] ...`)."""
    line = next(line for line in output.splitlines() if marker in line)
    return datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
