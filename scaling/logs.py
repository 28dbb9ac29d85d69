"""One logging setup for every process of a run: the `scaling` loggers with a rank prefix, the console for the
main process only (other ranks show warnings and errors), and a file per rank in the run directory.

Modules log through `logging.getLogger(__name__)`; nothing is shown until a process calls `setup_logging`
(the CLI does for its own process, the rank entry for each rank once the run directory is known), apart from
Python's last-resort output of warnings and errors.

Third-party messages we cannot fix (NOISE: torchao's missing CUDA kernels, torch's pytree deprecations,
DeepSpeed's launcher chatter, INC's device probing...) never reach the console: in-process they are taken off
their library's logger or Python's warnings and written to this rank's log file (held in memory until the run
directory is known); what the deepspeed launcher chain prints passes through `LineFilter` in the supervisor,
which writes them to OUTPUT/logs/launcher.log.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = "scaling"
LOGS_DIR = "logs"
LAUNCHER_LOG = "launcher.log"
CONSOLE_FORMAT = "%(rank_prefix)s%(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_file(run_dir: Path, rank: int) -> Path:
    """Where rank `rank` of the run in `run_dir` writes its log."""
    return Path(run_dir) / LOGS_DIR / f"rank-{rank}.log"


def launcher_log(run_dir: Path) -> Path:
    """Where the supervisor keeps the launcher chain's filtered output (see LineFilter)."""
    return Path(run_dir) / LOGS_DIR / LAUNCHER_LOG


@dataclass(frozen=True)
class Noise:
    """A third-party message we cannot fix, shown in the log file instead of the console."""

    source: str
    """The logger that emits it; "warnings" for a Python warning; "output" for a line a process prints
    outside logging (DeepSpeed's launcher processes, print()), seen only where the supervisor reads it."""
    pattern: str
    """A regular expression searched in the message."""
    why: str
    """Why it is harmless here."""


NOISE = (
    Noise("torchao", r"Failed to load .*torchao/_C", "torchao's CUDA/MX kernels, absent from CPU builds"),
    Noise("torchao.kernel.intmm", r"Detected no triton", "triton kernels are GPU-only"),
    Noise(
        "torch.utils._pytree",
        r"register_constant\(\) on Enum subclasses is deprecated",
        "torchao registers its enums the old way",
    ),
    Noise("DeepSpeed", r"Setting accelerator to CPU", "DeepSpeed's CPU fallback on a machine without GPU"),
    Noise("neural_compressor", r"hw aligned scales not supported", "INC probes for Gaudi FP8 scales"),
    Noise("neural_compressor", r"Auto detect accelerator: CPU", "INC's device probe on CPU"),
    Noise(
        "warnings",
        r"all_gather_into_tensor`? is deprecated",
        "DeepSpeed ZeRO calls the deprecated collective (FutureWarning, once per rank)",
    ),
    Noise("output", r"Setting CUDA_VISIBLE_DEVICES", "DeepSpeed's launcher sets it even without GPUs"),
    Noise("output", r"exits with return code = 75", "a clean preemption: the ranks saved and exited 75"),
    Noise("output", r"Unable to find hostfile", "one node: the launcher's local default is what we asked"),
    Noise(
        "output",
        r"\[INFO\] \[(launch|runner)\.py:\d+:",
        "the launcher's own progress (command, world info, spawned and finished processes)",
    ),
    Noise(
        "output",
        r"(Processing zero checkpoint '|Parsing checkpoint created by deepspeed==|Detected checkpoint of type "
        r"zero stage|Reconstructed (Frozen )?fp32 state dict with)",
        "DeepSpeed's zero_to_fp32 prints its progress while the final export consolidates the shards",
    ),
)


class _NoiseSink:
    """Where filtered records go: the rank's log file once `setup_logging` knows it, a bounded buffer before."""

    def __init__(self) -> None:
        self.handler: logging.Handler | None = None
        self.held: collections.deque[logging.LogRecord] = collections.deque(maxlen=1000)
        self.lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock:
            if self.handler is None:
                self.held.append(record)
                return
            handler = self.handler
        if record.levelno >= handler.level:
            handler.handle(record)

    def attach(self, handler: logging.Handler | None) -> None:
        with self.lock:
            self.handler = handler
            if handler is None:
                return
            held, self.held = list(self.held), collections.deque(maxlen=1000)
        for record in held:
            if record.levelno >= handler.level:
                handler.handle(record)


_SINK = _NoiseSink()


class _NoiseFilter(logging.Filter):
    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(p.search(message) for p in self.patterns):
            _SINK.emit(record)
            return False
        return True


_installed = False


def install_noise_filters() -> None:
    """Take NOISE off the console of this process (idempotent). Call before the libraries are imported:
    torchao and torch's pytree speak at import time. Filters sit on the emitting loggers, so they hold
    whatever handlers the libraries add later."""
    global _installed
    if _installed:
        return
    _installed = True
    by_logger: dict[str, list[re.Pattern[str]]] = collections.defaultdict(list)
    for noise in NOISE:
        if noise.source not in ("warnings", "output"):
            by_logger[noise.source].append(re.compile(noise.pattern))
    for name, patterns in by_logger.items():
        logging.getLogger(name).addFilter(_NoiseFilter(patterns))
    warning_patterns = [re.compile(n.pattern) for n in NOISE if n.source == "warnings"]
    shown = warnings.showwarning

    def showwarning(
        message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        text = str(message)
        if any(p.search(text) for p in warning_patterns):
            _SINK.emit(
                logging.LogRecord(
                    "py.warnings",
                    logging.WARNING,
                    filename,
                    lineno,
                    f"{category.__name__}: {text}",
                    None,
                    None,
                )
            )
            return
        shown(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning


_ALL_NOISE = [re.compile(n.pattern) for n in NOISE]


def is_noise(line: str) -> bool:
    """Whether a console line is one of NOISE's messages (in any format its library prints it)."""
    return any(p.search(line) for p in _ALL_NOISE)


class LineFilter:
    """Routes a child process's output: NOISE lines (with the source line Python prints under a warning) to
    `noise`, everything else to `console` unchanged. Lines end at `\n` or `\r`, so a progress bar redrawn
    with `\r` passes frame by frame; `flush()` passes on an unfinished line (a prompt, a bar's last frame)."""

    def __init__(self, console: Callable[[str], None], noise: Callable[[str], None]) -> None:
        self.console = console
        self.noise = noise
        self.pending = ""
        self.after_warning = False

    def feed(self, text: str) -> None:
        self.pending += text
        while (match := re.search(r"[\r\n]", self.pending)) is not None:
            piece, self.pending = self.pending[: match.end()], self.pending[match.end() :]
            self._route(piece)

    def flush(self) -> None:
        if self.pending:
            piece, self.pending = self.pending, ""
            self._route(piece)

    def _route(self, piece: str) -> None:
        body = piece.rstrip("\r\n")
        if self.after_warning and body.startswith("  "):  # the source line printed under a warning
            self.after_warning = False
            self.noise(body.strip() + "\n")
            return
        self.after_warning = False
        if body and is_noise(body):
            # A bar frame may precede the message on its line: the message is what is logged.
            self.noise(body + "\n")
            self.after_warning = "Warning: " in body
            return
        self.console(piece)


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
    install_noise_filters()
    _SINK.attach(None)  # the handler below replaces any earlier one; hold records until it exists
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
        _SINK.attach(file_handler)
    return logger


def _own(logger: logging.Logger, handler: logging.Handler) -> None:
    handler._scaling_owned = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


class _LostConsoleGuard:
    """A text stream that keeps working when its reader is gone: the first EPIPE points the underlying file
    descriptor at /dev/null and the write is dropped. A rank's stdout is a pipe to `scaling launch`'s output
    filter; when that process is killed, the rank must still reach its step boundary and save (the launcher
    watch asks it to) instead of dying of a BrokenPipeError in a progress bar or a print. Its log file keeps
    every record either way."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _silence(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._silence()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._silence()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def survive_lost_console() -> None:
    """Guard sys.stdout and sys.stderr against a reader that dies (see _LostConsoleGuard)."""
    if not isinstance(sys.stdout, _LostConsoleGuard):
        sys.stdout = _LostConsoleGuard(sys.stdout)
    if not isinstance(sys.stderr, _LostConsoleGuard):
        sys.stderr = _LostConsoleGuard(sys.stderr)
