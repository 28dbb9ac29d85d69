"""Rank functions for the tests of `on_rank0`/`from_rank0` (importable by name from the forkserver)."""

from __future__ import annotations

import os
import traceback
from typing import Any


def _fail(kind: str) -> Any:
    from scaling.errors import ConfigError, Problem

    if kind == "user":
        raise ConfigError([Problem("--data", "no such file", "missing.txt")])
    if kind == "bug":
        raise ZeroDivisionError("a bug on rank 0")
    return {"answer": 42}


def rank0_outcome(kind: str, share: bool) -> dict[str, Any]:
    """Join a plain gloo group, run `_fail(kind)` through on_rank0/from_rank0, say what this rank saw."""
    from datetime import timedelta

    import torch.distributed as dist

    from scaling.engine import dist as dist_setup

    rank = int(os.environ["RANK"])
    dist.init_process_group(
        "gloo", rank=rank, world_size=int(os.environ["WORLD_SIZE"]), timeout=timedelta(seconds=60)
    )
    run = dist_setup.from_rank0 if share else dist_setup.on_rank0
    try:
        return {"result": run(lambda: _fail(kind), rank=rank)}
    except Exception as err:
        return {
            "type": type(err).__name__,
            "bases": [cls.__name__ for cls in type(err).__mro__],
            "message": str(err),
            "traceback": traceback.format_exc(),
        }
    finally:
        dist.destroy_process_group()
