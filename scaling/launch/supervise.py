"""Run a launch plan on this host and turn what happened into one exit code and one message.

SIGTERM (a scheduler's preemption notice) is passed to the ranks this host started, which save at the next
step boundary and stop; the rank reports then make this process exit 75 whatever code the launcher chain
produced. Processes orphaned by a launcher that died are adopted (Linux child subreaper) and ended before
we exit, so a failed run leaves nothing behind on this host.
"""

from __future__ import annotations

import ctypes
import logging
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from scaling.launch.command import LaunchPlan, runner_environment, shown_local, write_env_file
from scaling.launch.quiet import QuietOutput
from scaling.launch.status import clear_reports, conclude, read_reports
from scaling.logs import launcher_log

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
ORPHAN_GRACE_S = 40.0
"""How long ranks left behind by a dead launcher get to finish (a checkpoint on SIGTERM) before SIGKILL."""


def run_plan(plan: LaunchPlan, *, output: Path, environ: Mapping[str, str] | None = None) -> int:
    """Start the plan's commands, wait for them, and return the run's exit code (0, 75 or a failure)."""
    clear_reports(output)
    write_env_file(plan, environ)
    env = runner_environment(plan, environ)
    _become_subreaper()
    before = {p.pid for p in _descendants()}  # e.g. a test's worker pool: not ours to end
    for argv in shown_local(plan):  # forwarded values masked
        log.info("+ %s", shlex.join(argv))
    quiet = QuietOutput(launcher_log(output))
    procs = [quiet.start(argv, env) for argv in plan.local]
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _forward_sigterm(procs))
    try:
        try:
            returncode = _wait_all(procs)
        except KeyboardInterrupt:
            # Ctrl-C reached the whole foreground group: the launchers are ending their ranks; let them.
            returncode = 130
            for proc in procs:
                proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        _reap_orphans(before)
        quiet.close()
    ours = [rank for node in plan.nodes for rank in node.ranks] if plan.spec.no_ssh else None
    outcome = conclude(returncode, read_reports(output), plan.world_size, ranks=ours)
    if outcome.message:
        log.warning("[scaling launch] %s", outcome.message)
    return outcome.exit_code


def _wait_all(procs: list[subprocess.Popen[Any]]) -> int:
    """The first failure's code; the other commands (one ssh per node) are ended when one fails."""
    failed = 0
    pending = list(procs)
    while pending:
        for proc in list(pending):
            code = proc.poll()
            if code is None:
                continue
            pending.remove(proc)
            if code != 0 and not failed:
                failed = code
                for other in pending:
                    other.terminate()
        time.sleep(0.2)
    return failed


def _forward_sigterm(procs: list[subprocess.Popen[Any]]) -> None:
    # Signal the ranks themselves: they save at the next step boundary and exit 75, which launch.py passes
    # on. Signalling launch.py instead would make it SIGTERM the ranks and then exit 1 on its own.
    ranks = [p for p in _descendants() if _is_rank(p)]
    targets = ranks or procs
    for target in targets:
        try:
            target.send_signal(signal.SIGTERM)
        except Exception:  # already gone
            continue


def _is_rank(proc: Any) -> bool:
    try:
        return "--resolved-config" in proc.cmdline() and "deepspeed.launcher" not in " ".join(proc.cmdline())
    except Exception:
        return False


def _descendants() -> list[Any]:
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _become_subreaper() -> None:
    with suppress(OSError, AttributeError):  # not Linux: orphans go to init as usual
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap_orphans(before: set[int]) -> None:
    import psutil

    left = [p for p in _descendants() if p.pid not in before]
    if not left:
        return
    _gone, alive = psutil.wait_procs(left, timeout=ORPHAN_GRACE_S)
    for proc in alive:
        log.warning("[scaling launch] killing leftover process %d", proc.pid)
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=5)
