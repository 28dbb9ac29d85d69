"""Reads what the launcher told this process about its place in the job.

This is the single reader of the launcher's environment variables; everything else receives a `LaunchEnv`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in the job, as the launcher (deepspeed, torchrun, slurm) described it."""

    rank: int = 0
    """Global rank of this process."""
    local_rank: int = 0
    """Rank within this node; selects the device."""
    world_size: int = 1
    """Number of processes in the job."""
    local_world_size: int = 1
    """Number of processes of this job on this node (they share its cores)."""
    master_addr: str = "127.0.0.1"
    """Address of rank 0's rendezvous."""
    master_port: int = 29500
    """Port of rank 0's rendezvous."""
    launched: bool = False
    """True when a launcher started this process (RANK and WORLD_SIZE are set), even for a job of one."""

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, local_rank: int | None = None
    ) -> LaunchEnv:
        env = os.environ if environ is None else environ
        lr = local_rank if local_rank is not None and local_rank >= 0 else int(env.get("LOCAL_RANK", "0"))
        return cls(
            rank=int(env.get("RANK", "0")),
            local_rank=lr,
            world_size=int(env.get("WORLD_SIZE", "1")),
            # torchrun says LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE
            local_world_size=int(
                env.get("LOCAL_WORLD_SIZE", env.get("LOCAL_SIZE", env.get("WORLD_SIZE", "1")))
            ),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", "29500")),
            launched="RANK" in env and "WORLD_SIZE" in env,
        )

    def export(self) -> dict[str, str]:
        """The variables torch.distributed's env:// rendezvous reads, for a process we start ourselves."""
        return {
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.local_rank),
            "WORLD_SIZE": str(self.world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }
