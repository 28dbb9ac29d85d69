"""DeepSpeed hostfiles (`hostname slots=N` per line, `#` comments), parsed with line numbers in errors."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from scaling.errors import ConfigError, Problem

_LINE = re.compile(r"^(?P<host>[A-Za-z0-9_.\-:\[\]]+)\s+slots\s*=\s*(?P<slots>\d+)\s*$")


@dataclass(frozen=True)
class Host:
    """One node of a hostfile."""

    name: str
    """Hostname or address, as ssh/pdsh will reach it."""
    slots: int
    """Processes (GPUs) to start on it."""
    line: int
    """Line number in the hostfile, for messages."""


def parse_hostfile(path: Path) -> list[Host]:
    if not path.is_file():
        raise ConfigError([Problem("--hostfile", "no such file", str(path))])
    hosts: list[Host] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if not match:
            problems.append(Problem(f"{path}:{number}", "expected 'HOSTNAME slots=N'", raw.strip()))
            continue
        name, slots = match["host"], int(match["slots"])
        if not is_valid_hostname(name):
            problems.append(
                Problem(f"{path}:{number}", "not a hostname (RFC 1123 labels) or an IP address", name)
            )
            continue
        if slots < 1:
            problems.append(Problem(f"{path}:{number}", "slots must be at least 1", raw.strip()))
        if name in seen:
            problems.append(
                Problem(f"{path}:{number}", f"host listed again (first on line {seen[name]})", name)
            )
        seen.setdefault(name, number)
        hosts.append(Host(name, slots, number))
    if not hosts and not problems:
        problems.append(Problem(str(path), "hostfile lists no hosts"))
    if problems:
        raise ConfigError(problems, header="invalid hostfile")
    return hosts


def world_size_of(path: Path, *, num_nodes: int | None = None, num_gpus: int | None = None) -> int:
    """Processes the deepspeed launcher will start for this hostfile and these limits."""
    hosts = parse_hostfile(path)
    if num_nodes is not None:
        hosts = hosts[:num_nodes]
    return sum(min(h.slots, num_gpus) if num_gpus else h.slots for h in hosts)


def is_valid_hostname(host: str) -> bool:
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host.strip("[]") if host.startswith("[") else host)
        return True
    labels = host.split(".")
    return 0 < len(host) <= 253 and all(_LABEL.match(label) for label in labels)


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")  # '_' too: common in container and cluster names
