"""Errors a user can act on.

Library code raises these; one place turns them into one clear message and exit code 2: the `scaling`
group (scaling.cli.main), and `run_command` there for a command run as its own program (a rank entry).
Anything else is a bug and keeps its traceback; between ranks, `scaling.engine.dist.on_rank0` keeps the
distinction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One defect in the user's input, located precisely enough to fix it."""

    path: str
    """Where the defect is: a dotted config key path, a CLI option, or a file name."""
    message: str
    """What is wrong, in plain words."""
    value: Any = None
    """The offending value as given (None when the defect is a missing value)."""
    fix: str = ""
    """What to do about it; empty when the message says it already."""

    def render(self) -> str:
        shown = "" if self.value is None else f" = {self.value!r}"
        tail = f" ({self.fix})" if self.fix else ""
        return f"{self.path}{shown}: {self.message}{tail}"


class UserError(Exception):
    """A mistake in the user's input: a flag, a file, a config key, a data file."""


class ConfigError(UserError):
    """One or more problems found while resolving a run; all of them are reported together."""

    def __init__(self, problems: list[Problem], header: str = "invalid configuration"):
        self.problems = list(problems)
        self.header = header
        lines = [f"{header}: {len(self.problems)} problem(s)"] + [f"  - {p.render()}" for p in self.problems]
        super().__init__("\n".join(lines))


class DataError(UserError):
    """A data source is missing, empty or unreadable."""


class CheckpointError(UserError):
    """A checkpoint is missing, incomplete or corrupt."""
