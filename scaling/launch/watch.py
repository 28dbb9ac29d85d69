"""A rank stops when the launcher that started it dies.

Nobody tells a rank that its launcher is gone: DeepSpeed's local runner dies on SIGTERM without passing it on,
and `scaling launch` killed with -9 cannot pass anything on; launch.py (orphaned, still alive) keeps waiting
for the ranks, which would train unsupervised to the end. So every rank started by a launcher watches the
launcher processes above it (our `scaling` commands, DeepSpeed's runner and launch.py) and, when one of them
disappears, sends itself SIGTERM: the trainer saves at the next step boundary, as on a preemption notice, and
exits 75. A parent-death signal (prctl PR_SET_PDEATHSIG) would see only the direct parent (launch.py), which
survives the runner's death, so the watch polls the whole chain.

Processes that are not launchers (a shell, srun's slurmstepd, mpirun, a test harness) end the chain: their
own mechanisms (or none) govern what happens when they die.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 1.0
"""How often the chain is checked: a launcher's death is noticed within this, plus one step to stop at."""

_LAUNCHER_MODULES = ("deepspeed.launcher.launch", "deepspeed.launcher.runner")
_LAUNCHER_SCRIPTS = ("deepspeed", "ds", "scaling")


@dataclass(frozen=True)
class Launcher:
    """One watched process: its pid and start time (a pid reused after its death is not the launcher)."""

    pid: int
    created: float
    """psutil's create_time of the process."""
    name: str
    """What it runs, for the message."""

    def alive(self) -> bool:
        import psutil

        try:
            proc = psutil.Process(self.pid)
            return proc.create_time() == self.created and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def is_launcher(cmdline: list[str]) -> bool:
    """Whether a command line is one of the launchers a rank answers to (ours or DeepSpeed's)."""
    if not cmdline:
        return False
    if any(module in cmdline for module in _LAUNCHER_MODULES):
        return True
    # `scaling ...` / `deepspeed ...` run as scripts, or through an interpreter: `python /venv/bin/deepspeed`
    if any(Path(arg).name in _LAUNCHER_SCRIPTS for arg in cmdline[:2]):
        return True
    # `python [-u] -m scaling ...` (but not `-m scaling.rank`: that is a rank)
    head = cmdline[:4]
    return "-m" in head and head.index("-m") + 1 < len(cmdline) and cmdline[head.index("-m") + 1] == "scaling"


def launcher_chain(pid: int | None = None) -> list[Launcher]:
    """The launcher processes above `pid` (this process), nearest first, up to the first that is not one."""
    import psutil

    chain: list[Launcher] = []
    try:
        proc = psutil.Process(pid or os.getpid()).parent()
        while proc is not None and proc.pid > 1:
            cmdline = proc.cmdline()
            if not is_launcher(cmdline):
                break
            chain.append(Launcher(proc.pid, proc.create_time(), _describe(cmdline)))
            proc = proc.parent()
    except psutil.Error:  # a launcher that exited while we looked: the watch sees it gone on its first poll
        pass
    return chain


def _describe(cmdline: list[str]) -> str:
    for module in _LAUNCHER_MODULES:
        if module in cmdline:
            return module
    text = " ".join(Path(cmdline[0]).name if i == 0 else a for i, a in enumerate(cmdline[:4]))
    return text if len(text) <= 80 else text[:77] + "..."


class LauncherWatch:
    """A daemon thread that SIGTERMs this process once, when any process of `chain` is gone."""

    def __init__(self, chain: list[Launcher], *, poll_s: float = POLL_S) -> None:
        self.chain = chain
        self.poll_s = poll_s
        self.gone: Launcher | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scaling-launcher-watch", daemon=True)

    def start(self) -> LauncherWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            gone = next((launcher for launcher in self.chain if not launcher.alive()), None)
            if gone is None:
                continue
            self.gone = gone
            log.warning(
                "launcher process %d (%s) is gone: stopping as on SIGTERM (saving at the next step boundary)",
                gone.pid,
                gone.name,
            )
            # Only while a handler turns SIGTERM into "save at the step boundary" (the training loop): before
            # it, wait for it; after it (the loop ended: saving, reporting, exporting, leaving the group) the
            # default action would kill the rank before its report, and its peers with it (launch.py ends
            # every rank when one exits non-zero).
            while not self._stop.is_set():
                if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None):
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                self._stop.wait(self.poll_s / 10)
            return


def watch_launchers(**kwargs: Any) -> LauncherWatch | None:
    """Start watching this rank's launchers; None when no launcher of ours or DeepSpeed's started it."""
    chain = launcher_chain()
    if not chain:
        return None
    return LauncherWatch(chain, **kwargs).start()
