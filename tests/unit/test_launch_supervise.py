"""The supervisor of `scaling launch` on a stand-in process tree (a "launcher" that starts one "rank"): SIGTERM
to `scaling launch` alone reaches the rank, whose report turns the launcher's exit code 1 into 75; a rank
orphaned by its dying launcher is waited for, not left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

# The "rank": on SIGTERM it saves (writes its report) and exits 75, as the trainer does.
RANK = r"""
import signal, sys, time
from pathlib import Path
from scaling.launch.status import PREEMPTED, write_report
out = Path(sys.argv[1])
def stop(*_):
    write_report(out, rank=0, step=4, kind=PREEMPTED, error=str(out / "checkpoints" / "step-00000004"))
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
(out / "rank-started").write_text("1")
time.sleep(60)
"""
# The "launcher": like launch.py after a signal, it reports 1 whatever its rank said.
LAUNCHER = r"""
import subprocess, sys
rank = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], "--resolved-config", "x"])
rank.wait()
sys.exit(1)
"""
SUPERVISOR = r"""
import json, sys
from pathlib import Path
from scaling.launch.command import LaunchPlan, LaunchSpec
from scaling.launch.supervise import run_plan
out = Path(sys.argv[1])
argv = json.loads(sys.argv[2])
plan = LaunchPlan(spec=LaunchSpec(), resources={"localhost": [0]}, master_addr="127.0.0.1", local=[argv],
                  nodes=[], exports={}, env_file=None)
sys.exit(run_plan(plan, output=out))
"""


def supervise(tmp_path: Path, launcher: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", launcher, RANK, str(tmp_path)]
    return subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(tmp_path), json.dumps(argv)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_sigterm_to_scaling_launch_reaches_the_ranks_and_exits_75(tmp_path):
    proc = supervise(tmp_path, LAUNCHER)
    wait_for(tmp_path / "rank-started")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    assert "preempted: every rank stopped after step 4" in err


def _is_rank(process: psutil.Process) -> bool:
    try:
        return "--resolved-config" in process.cmdline()
    except (psutil.ZombieProcess, psutil.NoSuchProcess):  # the dying launcher's other children
        return False


def test_ranks_orphaned_by_a_dying_launcher_are_waited_for(tmp_path):
    # a launcher that dies at once, leaving its rank running (what a SIGTERMed deepspeed runner does)
    dying = LAUNCHER.replace("rank.wait()\nsys.exit(1)", "import os; os._exit(3)")
    proc = supervise(tmp_path, dying)
    wait_for(tmp_path / "rank-started")
    rank = next(p for p in psutil.Process(proc.pid).children(recursive=True) if _is_rank(p))
    rank.terminate()  # it saves and exits 75; the supervisor must still be waiting for it
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    assert not psutil.pid_exists(rank.pid) or rank.status() == psutil.STATUS_ZOMBIE
