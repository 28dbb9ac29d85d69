"""Process-group setup and teardown: the one place that talks to torch.distributed's lifecycle."""

from __future__ import annotations

import os
import sys
from datetime import timedelta

from scaling.distributed.env import LaunchEnv


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
