"""Distributed topology: the only place that reads RANK/LOCAL_RANK/WORLD_SIZE."""

from scaling.distributed.env import LaunchEnv
from scaling.distributed.topology import Topology

__all__ = ["LaunchEnv", "Topology"]
