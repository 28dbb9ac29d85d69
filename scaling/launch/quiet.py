"""The supervisor's view of the launcher chain's output: third-party noise off the console, into the log."""

from __future__ import annotations

import codecs
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from scaling.logs import LineFilter


class QuietOutput:
    """Passes the launcher chain's output (the launcher's and every local rank's) to our stdout and stderr,
    minus the third-party noise (scaling.logs.NOISE), which goes to OUTPUT/logs/launcher.log instead."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._log: Any = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[Any]:
        """Start `argv` with its stdout and stderr read by this object."""
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for stream, console in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
            thread = threading.Thread(target=self._pump, args=(stream, console), daemon=True)
            thread.start()
            self._threads.append(thread)
        return proc

    def _noise(self, line: str) -> None:
        with self._lock:
            if self._log is None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._log.write(line)
            self._log.flush()

    def _pump(self, stream: Any, console: Any) -> None:
        def show(text: str) -> None:
            console.write(text)
            console.flush()

        lines = LineFilter(show, self._noise)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = stream.fileno()
        try:
            while True:
                ready, _, _ = select.select([fd], [], [], 0.3)
                if not ready:
                    lines.flush()  # a prompt or a bar frame without its line end: show it now
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                lines.feed(decoder.decode(chunk))
            lines.feed(decoder.decode(b"", final=True))
            lines.flush()
        except (OSError, ValueError):  # our console went away: the run goes on
            pass
        finally:
            stream.close()

    def close(self) -> None:
        for thread in self._threads:
            thread.join(timeout=5)
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None
