"""torch.distributed internals: module-level default timeouts and live process-group timeouts."""

from __future__ import annotations

from datetime import timedelta


def default_group_timeout() -> timedelta:
    """The timeout `new_group` gives a group created without one (what DeepSpeed's sub-groups get)."""
    import torch.distributed.distributed_c10d as c10d

    return c10d.default_pg_timeout


def set_default_group_timeout(timeout: timedelta) -> None:
    """Change the timeout of groups created from now on without an explicit one.

    torch reads `default_pg_timeout` from the c10d module (and, in older releases, from `constants`) when a
    group is created, so rebinding the module attribute is the only way to reach DeepSpeed's `new_group`
    calls, which pass no timeout.
    """
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    c10d.default_pg_timeout = timeout
    if hasattr(dist, "constants"):
        dist.constants.default_pg_timeout = timeout


def set_live_group_timeouts(timeout: timedelta) -> int:
    """Set `timeout` on every existing process group this rank belongs to; returns how many were changed.

    Uses c10d's private group registry (`_world.pg_map`), membership test (`_rank_not_in_group`) and setter
    (`_set_pg_timeout`): torch has no public way to change a live group's timeout. Measured on gloo: a peer
    that stops answering makes the next collective raise `Timed out waiting ...` after the new bound.
    """
    import torch.distributed.distributed_c10d as c10d

    changed = 0
    for group in list(c10d._world.pg_map):
        if not c10d._rank_not_in_group(group):
            c10d._set_pg_timeout(timeout, group)
            changed += 1
    return changed
