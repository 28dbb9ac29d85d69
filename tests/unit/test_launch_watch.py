"""Which processes a rank treats as its launchers, and that the death of one turns into SIGTERM for the rank."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from scaling.launch.watch import is_launcher


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (["/venv/bin/python", "-u", "-m", "deepspeed.launcher.launch", "--world_info=e30="], True),
        (["/venv/bin/python", "-m", "deepspeed.launcher.runner", "--num_gpus", "2"], True),
        (["/venv/bin/python", "/venv/bin/deepspeed", "--num_gpus", "2", "train.py"], True),
        (["/venv/bin/python", "/venv/bin/scaling", "launch", "--num-gpus", "2"], True),
        (["scaling", "train", "--num-gpus", "2"], True),
        (["/venv/bin/python", "-u", "-m", "scaling", "launch"], True),
        (["/venv/bin/python", "-u", "-m", "scaling.rank", "--local_rank=0", "train"], False),  # a rank
        (["/venv/bin/python", "-m", "pytest", "tests/"], False),
        (["/bin/bash", "job.sh"], False),
        (["slurmstepd: [12.0]"], False),
        ([], False),
    ],
)
def test_is_launcher(cmdline, expected):
    assert is_launcher(cmdline) is expected


def test_a_launchers_death_sigterms_the_rank_once(tmp_path):
    # In a child process (the watch signals its own process): a `sleep` stands for the launcher.
    script = textwrap.dedent(
        """
        import signal, subprocess, sys, time
        import psutil
        from scaling.launch.watch import Launcher, LauncherWatch

        got = []
        signal.signal(signal.SIGTERM, lambda *a: got.append(time.monotonic()))
        sleeper = subprocess.Popen(["sleep", "60"])
        proc = psutil.Process(sleeper.pid)
        watch = LauncherWatch([Launcher(proc.pid, proc.create_time(), "sleep")], poll_s=0.05).start()
        time.sleep(0.3)
        assert not got, "SIGTERM while the launcher lives"
        sleeper.kill()
        killed = time.monotonic()
        sleeper.wait()
        while not got and time.monotonic() - killed < 5:
            time.sleep(0.01)
        time.sleep(0.3)
        print(len(got), watch.gone.pid == sleeper.pid, round(got[0] - killed, 2) if got else None)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    count, named, delay = result.stdout.split()
    assert (count, named) == ("1", "True")
    assert float(delay) < 1.0


def test_no_sigterm_while_no_handler_turns_it_into_a_save(tmp_path):
    # After the training loop (its SIGTERM handler gone) the rank is saving, reporting or leaving the group:
    # the default action would kill it there, and launch.py would then kill its peers before their reports.
    script = textwrap.dedent(
        """
        import signal, subprocess, time
        import psutil
        from scaling.launch.watch import Launcher, LauncherWatch

        sleeper = subprocess.Popen(["sleep", "60"])
        proc = psutil.Process(sleeper.pid)
        watch = LauncherWatch([Launcher(proc.pid, proc.create_time(), "sleep")], poll_s=0.05).start()
        sleeper.kill(); sleeper.wait()
        time.sleep(0.5)  # default handler: the watch must hold its signal (or this process would die here)
        got = []
        signal.signal(signal.SIGTERM, lambda *a: got.append(1))  # a training loop starts
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        print(len(got))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1"]
