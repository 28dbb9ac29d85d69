"""One logging setup for every process of a run: the `scaling` loggers with a rank prefix, the console for the
main process only (other ranks show warnings and errors), and a file per rank in the run directory.

Modules log through `logging.getLogger(__name__)`; nothing is shown until a process calls `setup_logging`
(the CLI does for its own process, the rank entry for each rank once the run directory is known), apart from
Python's last-resort output of warnings and errors.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = "scaling"
LOGS_DIR = "logs"
CONSOLE_FORMAT = "%(rank_prefix)s%(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_file(run_dir: Path, rank: int) -> Path:
    """Where rank `rank` of the run in `run_dir` writes its log."""
    return Path(run_dir) / LOGS_DIR / f"rank-{rank}.log"


class _StderrHandler(logging.Handler):
    """Writes to whatever `sys.stderr` is at the time of the record (click's test runner and pytest swap
    it), not to the stream that was current when logging was set up."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # logging must never take the run down; report it the way logging does
            self.handleError(record)


class _RankPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank_prefix = self.prefix
        return True


def setup_logging(
    rank: int = 0,
    run_dir: Path | str | None = None,
    level: int = logging.INFO,
    *,
    world_size: int = 1,
) -> logging.Logger:
    """Configure the `scaling` logger of this process; calling it again replaces the previous setup.

    - console (stderr): rank 0 shows `level` and above, other ranks only warnings and errors, so N ranks do
      not print every line N times; lines carry "[rank N] " when the job has more than one rank;
    - file: with `run_dir`, every rank writes `level` and above to `run_dir/logs/rank-N.log` (timestamps,
      logger names), so what a non-main rank said is still there after the job.
    """
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        if getattr(handler, "_scaling_owned", False):
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(level)
    # Our handlers show the records; the root logger's (a library's basicConfig) would print them again.
    logger.propagate = False
    prefix = f"[rank {rank}] " if world_size > 1 or rank > 0 else ""

    console = _StderrHandler()
    console.setLevel(level if rank == 0 else max(level, logging.WARNING))
    console.addFilter(_RankPrefix(prefix))
    console.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    _own(logger, console)

    if run_dir is not None:
        path = log_file(Path(run_dir), rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(path, encoding="utf-8")
        file_handler.setLevel(level)
        file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
        _own(logger, file_handler)
    return logger


def _own(logger: logging.Logger, handler: logging.Handler) -> None:
    handler._scaling_owned = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
