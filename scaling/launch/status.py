"""How each rank ended, written to the run directory so the launching host can say what happened.

Exit codes do not survive the launcher chain intact (launch.py exits 1 when it is itself signalled, pdsh and
srun fold many ranks into one code), so every rank that stops early writes one small JSON report:
OUTPUT/reports/rank-NNNNN.json. A rank killed with SIGKILL writes nothing; its silence is what names it.
`scaling launch` clears the reports before it starts the ranks and reads them after the launcher exits.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

EXIT_USER_ERROR = 2  # a UserError: one message, no traceback, on every rank
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the run saved and stopped on SIGTERM; `--resume auto` continues it
REPORTS_DIR = "reports"
PREEMPTED = "preempted"
FAILED = "failed"

# Messages of torch/gloo/NCCL when a *peer* went away or stopped answering: a rank that reports one of these is
# a victim of another rank's failure, not its cause.
_PEER_ERRORS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Timed out waiting",
    "timed out",
    "Broken pipe",
    "NCCL communicator was aborted",
    "ProcessGroupGloo",
)


@dataclass(frozen=True)
class RankReport:
    """One rank's account of why it stopped before the end of the schedule."""

    rank: int
    """Global rank."""
    host: str
    """Hostname of the node it ran on."""
    step: int
    """The optimizer step it was running (1-based) or, when preempted, the step it saved."""
    kind: str
    """`preempted` (saved on SIGTERM) or `failed` (an exception ended it)."""
    error: str = ""
    """`ExceptionType: message` for a failure; the checkpoint path for a preemption."""
    time: float = 0.0
    """Unix time the report was written."""

    @property
    def peer_failure(self) -> bool:
        """Whether the error says another rank vanished or hung (this rank is collateral damage)."""
        return self.kind == FAILED and any(marker in self.error for marker in _PEER_ERRORS)


def write_report(output: Path, *, rank: int, step: int, kind: str, error: str = "") -> Path:
    """Record this rank's end. Never raises: reporting must not mask the failure being reported."""
    report = RankReport(
        rank=rank, host=socket.gethostname(), step=step, kind=kind, error=error, time=time.time()
    )
    directory = output / REPORTS_DIR
    path = directory / f"rank-{rank:05d}.json"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(asdict(report)) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
    return path


def clear_reports(output: Path) -> None:
    """Forget the reports of an earlier attempt (a resumed run reuses the directory)."""
    shutil.rmtree(output / REPORTS_DIR, ignore_errors=True)


def read_reports(output: Path) -> list[RankReport]:
    reports = []
    for path in sorted((output / REPORTS_DIR).glob("rank-*.json")):
        try:
            reports.append(RankReport(**json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError):
            continue  # a half-visible file on a slow shared filesystem: the other reports still count
    return reports


@dataclass(frozen=True)
class Outcome:
    """What the launching host concludes from the launcher's exit code and the rank reports."""

    exit_code: int
    """The code `scaling launch` exits with: 0, 75 (preempted, resumable) or the launcher's failure code."""
    message: str
    """One paragraph for the log; empty for a clean finish."""


def conclude(
    returncode: int, reports: list[RankReport], world_size: int, *, ranks: list[int] | None = None
) -> Outcome:
    """`ranks`: the ranks this host started and must account for (all of them by default; with --no-ssh
    only this node's, whose reports are the only ones a node-local run directory holds)."""
    failed = [r for r in reports if r.kind == FAILED]
    preempted = [r for r in reports if r.kind == PREEMPTED]
    if not failed and preempted:
        first = min(preempted, key=lambda r: r.rank)
        return Outcome(
            EXIT_PREEMPTED,
            f"preempted: every rank stopped after step {first.step} and saved {first.error}; "
            "run the same command with --resume auto to continue",
        )
    if returncode == 0 and not failed:
        return Outcome(0, "")
    if returncode == EXIT_USER_ERROR and not reports:
        # Every rank raised the same user error before training (it is on the console once, from rank 0).
        return Outcome(EXIT_USER_ERROR, "the ranks stopped before training on the error above")
    code = returncode if returncode > 0 else 1
    silent = sorted(set(range(world_size) if ranks is None else ranks) - {r.rank for r in reports})
    causes = [r for r in failed if not r.peer_failure]
    lines = []
    if causes:
        for r in causes:
            lines.append(f"rank {r.rank} on {r.host} failed at step {r.step}: {r.error}")
    if silent and (not causes or returncode < 0 or returncode > 128):
        steps = sorted({r.step for r in failed})
        at = f" (its peers failed at step {steps[0]})" if steps else ""
        names = ", ".join(map(str, silent))
        lines.append(f"rank {names} stopped without a report: killed, crashed hard or hung{at}")
    for r in failed:
        if r.peer_failure:
            lines.append(f"  rank {r.rank} on {r.host} at step {r.step}: {_first_line(r.error)}")
    if not lines:
        lines.append("no rank reported a failure; see the ranks' output above")
    return Outcome(code, f"run failed (launcher exit code {returncode}):\n" + "\n".join(lines))


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 200 else line[:197] + "..."
