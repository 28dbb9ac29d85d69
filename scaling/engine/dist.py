"""Process-group setup and teardown: the one place that talks to torch.distributed's lifecycle."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any, TypeVar, cast

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

    from scaling.compat.deepspeed import skip_shm_comm_build
    from scaling.compat.torch_dist import set_default_group_timeout

    timeout = timedelta(seconds=timeout_s)
    set_default_group_timeout(timeout)
    if dist.is_initialized():
        set_collective_timeout(timeout_s)  # joined earlier (to receive the run config): adopt the run's bound
        return
    for key, value in env.export().items():
        if env.launched:
            os.environ.setdefault(key, value)  # the launcher's rendezvous stands
        else:
            # A run we start ourselves uses the port it chose, not one an earlier run left in the environment.
            os.environ[key] = value
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(
            env.local_rank
        )  # what DeepSpeed sets later; models placed before it need it now
    if not cuda:
        # DeepSpeed would JIT-compile a shared-memory all-reduce op on every init and then use gloo anyway.
        skip_shm_comm_build()
    import deepspeed

    deepspeed.init_distributed(
        dist_backend="nccl" if cuda else "gloo",
        auto_mpi_discovery=False,
        timeout=timeout,
        rank=env.rank,
        world_size=env.world_size,
    )


def set_collective_timeout(timeout_s: float) -> None:
    """Bound every collective of every existing group (and of groups created later) by `timeout_s`.

    Measured on gloo: a peer that stops answering makes the next collective raise `Timed out waiting ...`
    after exactly the new bound."""
    import torch.distributed as dist

    from scaling.compat.torch_dist import set_default_group_timeout, set_live_group_timeouts

    timeout = timedelta(seconds=timeout_s)
    set_default_group_timeout(timeout)
    if dist.is_initialized():
        set_live_group_timeouts(timeout)


@contextmanager
def collective_timeout(timeout_s: float) -> Iterator[None]:
    """Use a longer bound for a phase where ranks legitimately wait on each other (a checkpoint being
    written, rank 0 exporting), then return to the previous one."""
    from scaling.compat.torch_dist import default_group_timeout

    previous = default_group_timeout().total_seconds()
    set_collective_timeout(timeout_s)
    try:
        yield
    finally:
        set_collective_timeout(previous)


def abandon() -> None:
    """Leave the group after a failure without the closing barrier: a dead or hung peer would make that
    barrier wait a whole timeout more before the process could exit."""
    import torch.distributed as dist

    if dist.is_initialized():
        with suppress(Exception):  # the group is already broken; exiting is all that is left to do
            _destroy_world()


def teardown() -> None:
    """Leave the group cleanly: without it gloo sometimes aborts at exit (SIGABRT) after ZeRO-3 runs."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            _destroy_world()


def _destroy_world() -> None:
    """Destroy every group, through DeepSpeed when it manages them: its `destroy_process_group` also drops the
    groups it caches (world clone, data-parallel, ZeRO, sequence-parallel), which a torch-only destroy leaves
    stale, so a later run in the same process (a notebook, `compress pipeline`, tests) would use dead groups."""
    import sys

    import torch.distributed as dist

    comm = sys.modules.get("deepspeed.comm.comm")  # holds the live `cdb` (the package re-export does not)
    if comm is not None and getattr(comm, "cdb", None) is not None:
        comm.destroy_process_group()
    else:
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def gather_objects(value: T, *, local_rank: int = 0) -> list[T]:
    """Every rank's `value`, in rank order, on every rank (just `[value]` without a process group).

    NCCL moves objects through the current CUDA device: before the engine exists (which selects the rank's
    device, DeepSpeed: `set_device(local_rank)`) select the same one, or every rank of a node would use GPU 0."""
    import torch
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
        torch.cuda.set_device(local_rank)
    found: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(found, value)
    return found


class PeerFailed(RuntimeError):
    """Another rank hit a bug (not a user error) in a step all ranks wait on; its own traceback is on that
    rank's output. A RuntimeError, so this rank too ends as a failure and not as a user error (exit 2)."""


def from_rank0(fn: Callable[[], T], *, rank: int) -> T:
    """Run `fn` on rank 0 and give every rank its result, or make every rank fail with rank 0's error."""
    return _run_on_rank0(fn, rank=rank, share_result=True)  # type: ignore[return-value]


def on_rank0(fn: Callable[[], T], *, rank: int) -> T | None:
    """Run `fn` on rank 0 only and let every rank learn whether it failed.

    A bare `if rank == 0: fn(); barrier()` leaves the other ranks waiting for the collective timeout when
    rank 0 raises; here they fail at once. A user error reaches them as the same UserError (exit 2 with
    one message everywhere); any other exception is re-raised on rank 0 with its traceback and becomes
    `PeerFailed` (naming it) on the others. Returns `fn`'s result on rank 0, None elsewhere.
    """
    return _run_on_rank0(fn, rank=rank, share_result=False)


def _run_on_rank0(fn: Callable[[], T], *, rank: int, share_result: bool) -> T | None:
    import torch.distributed as dist

    shared = dist.is_initialized() and dist.get_world_size() > 1
    if rank == 0:
        try:
            result = fn()
        except UserError as err:
            if shared:
                _broadcast(("user", str(err), None))
            raise
        except BaseException as err:  # KeyboardInterrupt too: the others must not wait for a timeout
            if shared:
                _broadcast(("bug", f"{type(err).__name__}: {err}", None))
            raise
        if shared:
            _broadcast(("ok", None, result if share_result else None))
        return result
    if not shared:
        return None
    status, message, shared_result = _broadcast(None)
    if status == "user":
        raise UserError(message)
    if status == "bug":
        raise PeerFailed(f"rank 0 failed: {message} (its traceback is in rank 0's output)")
    return cast("T", shared_result) if share_result else None


def _broadcast(outcome: tuple[str, str | None, object] | None) -> tuple[str, str | None, object]:
    import torch.distributed as dist

    holder = [outcome]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]  # type: ignore[return-value]
