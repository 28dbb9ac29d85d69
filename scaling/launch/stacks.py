"""Where each rank was when the job broke: OUTPUT/stacks/rank-NNNNN.txt, and one summary line about them.

A rank that fails (a collective timed out because a peer hung, a peer's connection closed because it was
killed, or its own error) writes the failure's traceback and every thread's stack (faulthandler) into its
file before leaving. A rank that is alive but stuck can be asked for its stacks with `kill -USR1 PID`
(faulthandler, answered even while the main thread is blocked in C). A rank stopped or killed writes nothing,
and the summary says so: with the peers' stacks (waiting in the same collective at step N) that is what names it.
"""

from __future__ import annotations

import faulthandler
import re
import shutil
import signal
import traceback
from contextlib import suppress
from pathlib import Path
from typing import IO

STACKS_DIR = "stacks"
_open: dict[int, IO[str]] = {}  # faulthandler writes to the file descriptor: the file must stay open


def stack_path(output: Path, rank: int) -> Path:
    return output / STACKS_DIR / f"rank-{rank:05d}.txt"


def clear(output: Path) -> None:
    """Forget the stacks of an earlier attempt (a rank that does not start this time must not look stuck)."""
    shutil.rmtree(output / STACKS_DIR, ignore_errors=True)


def arm(output: Path, rank: int) -> None:
    """Open this rank's stack file (emptied: it describes this attempt) and answer SIGUSR1 with a dump."""
    path = stack_path(output, rank)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 - held open for faulthandler
    except OSError:
        return
    if hasattr(signal, "SIGUSR1"):
        with suppress(ValueError, RuntimeError):  # not the main thread of the interpreter
            faulthandler.register(signal.SIGUSR1, file=handle, all_threads=True)
    earlier = _open.pop(rank, None)  # a second run in this process (tests): its file is done with
    if earlier is not None:
        earlier.close()
    _open[rank] = handle


def disarm(rank: int) -> None:
    """Stop answering SIGUSR1 and close the file (the run in this process is over)."""
    if hasattr(signal, "SIGUSR1"):
        with suppress(ValueError, RuntimeError):
            faulthandler.unregister(signal.SIGUSR1)
    handle = _open.pop(rank, None)
    if handle is not None:
        handle.close()


def dump_failure(output: Path, rank: int, step: int, err: BaseException) -> None:
    """Write the failure and every thread's stack. Never raises: it runs while a failure is being reported."""
    handle = _open.get(rank)
    try:
        if handle is None:
            stack_path(output, rank).parent.mkdir(parents=True, exist_ok=True)
            handle = _open[rank] = open(stack_path(output, rank), "a", encoding="utf-8")  # noqa: SIM115
        handle.write(f"== rank {rank} failed at step {step}: {type(err).__name__}: {err}\n")
        handle.write("".join(traceback.format_exception(err)))
        handle.write("== every thread at the failure\n")
        handle.flush()
        faulthandler.dump_traceback(file=handle, all_threads=True)
        handle.flush()
    except (OSError, ValueError):  # a full disk or a closed file: the failure itself is still reported
        pass


_FRAME = re.compile(r'File "([^"]+)", line \d+, in (\S+)')


def innermost_call(text: str) -> str | None:
    """Where the failure's traceback ends: the innermost frame that is ours (scaling/...) as `module.function`,
    then the innermost frame of all (e.g. the collective in DeepSpeed or torch) when it is another."""
    failure = text.split("== every thread at the failure")[0]
    ours = [(path, name) for path, name in _FRAME.findall(failure) if _ours(path)]
    if not ours:
        return None
    path, name = ours[-1]
    innermost_path, innermost = _FRAME.findall(failure)[-1]
    deeper = (
        f" > {Path(innermost_path).stem}.{innermost}" if (innermost_path, innermost) != (path, name) else ""
    )
    return f"{Path(path).stem}.{name}{deeper}"


_PACKAGE = Path(__file__).resolve().parents[1]


def _ours(path: str) -> bool:
    """A frame of this package: here, or installed (other nodes may run it from their site-packages)."""
    return path.startswith(str(_PACKAGE) + "/") or "/site-packages/scaling/" in path


def summary(output: Path, world_size: int) -> str:
    """One paragraph: where the ranks that left a stack were, and which ranks left none (or stood elsewhere)."""
    where: dict[int, str | None] = {}
    steps: set[int] = set()
    for rank in range(world_size):
        path = stack_path(output, rank)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        if text.strip():
            where[rank] = innermost_call(text)
            steps.update(int(s) for s in re.findall(r"failed at step (\d+)", text))
    if not where:
        return ""
    silent = [r for r in range(world_size) if r not in where]
    counts: dict[str | None, int] = {}
    for call in where.values():
        counts[call] = counts.get(call, 0) + 1
    common = max(counts, key=lambda c: counts[c])
    odd = sorted(r for r, call in where.items() if call != common)
    at = f" at step {_ranks(sorted(steps))}" if steps else ""
    alike = sorted(r for r, call in where.items() if call == common)
    lines = [f"stacks in {output / STACKS_DIR}: rank {_ranks(alike)} stood{at} in {common or 'unknown'}"]
    for rank in odd:
        lines.append(f"rank {rank}'s stack differs: it was in {where[rank] or 'unknown'}")
    if silent:
        lines.append(
            f"rank {_ranks(silent)} left no stack: stopped, killed or hung outside Python "
            "(kill -USR1 a live rank to get its stack)"
        )
    return "\n".join(lines)


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks))
