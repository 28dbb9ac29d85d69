"""Rank functions of the resume-safety tests (importable by name from the harness's forkserver)."""

from __future__ import annotations

import time
from typing import Any


def train_verified_by_ranks(args: list[str]) -> dict[str, Any]:
    """`scaling train ARGS` as one harness rank, with the pre-launch hashing off (as for a checkpoint too big
    to hash before launch), so that the ranks' own verification is what finds a damaged shard."""
    from ranks import train_cli

    from scaling.checkpoint import resume

    resume.HASH_BEFORE_LAUNCH_BYTES = 0
    started = time.monotonic()
    result = train_cli(args)
    return {**result, "seconds": time.monotonic() - started}
