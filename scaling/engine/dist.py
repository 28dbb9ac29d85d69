"""Process-group setup and teardown: the one place that talks to torch.distributed's lifecycle."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from scaling.distributed.env import LaunchEnv
from scaling.errors import UserError

T = TypeVar("T")


def init_process_group(env: LaunchEnv, *, timeout_s: float) -> None:
    """Start (or join) the job's process group with a collective timeout we choose.

    DeepSpeed builds its data/pipe/model sub-groups with `new_group(ranks)` and no timeout, so they get
    torch's module-level default (30 min). Overriding that default before any group exists gives every group
    our bound, so a dead or hung peer ends the job in `timeout_s`, not half an hour.
    """
    import torch
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    timeout = timedelta(seconds=timeout_s)
    c10d.default_pg_timeout = timeout
    if hasattr(dist, "constants"):
        dist.constants.default_pg_timeout = timeout
    if dist.is_initialized():
        return
    for key, value in env.export().items():
        os.environ.setdefault(key, value)
    cuda = torch.cuda.is_available()
    if not cuda:
        _skip_shm_comm_build()
    import deepspeed

    deepspeed.init_distributed(
        dist_backend="nccl" if cuda else "gloo",
        auto_mpi_discovery=False,
        timeout=timeout,
        rank=env.rank,
        world_size=env.world_size,
    )


def _skip_shm_comm_build() -> None:
    # On CPU DeepSpeed JIT-compiles a shared-memory all-reduce op on every init (~30 s on 2 cores) and falls
    # back to plain gloo when it cannot. We go straight to gloo. The attribute must be patched on the module
    # object in sys.modules: `import deepspeed.comm.torch as m` binds the `torch` package instead.
    import deepspeed.comm.torch  # noqa: F401

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def teardown() -> None:
    """Leave the group cleanly: without it gloo sometimes aborts at exit (SIGABRT) after ZeRO-3 runs."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def on_rank0(fn: Callable[[], T], *, rank: int) -> T | None:
    """Run `fn` on rank 0 only and let every rank learn whether it failed.

    A bare `if rank == 0: fn(); barrier()` leaves the other ranks waiting for the collective timeout when
    rank 0 raises; here they raise the same user error at once.
    """
    import torch.distributed as dist

    result: T | None = None
    error: str | None = None
    if rank == 0:
        try:
            result = fn()
        except UserError as err:
            error = str(err)
        except Exception as err:
            error = f"rank 0 failed: {type(err).__name__}: {err}"
            if not dist.is_initialized():
                raise
    if dist.is_initialized() and dist.get_world_size() > 1:
        holder = [error]
        dist.broadcast_object_list(holder, src=0)
        error = holder[0]
    if error is not None:
        raise UserError(error)
    return result
