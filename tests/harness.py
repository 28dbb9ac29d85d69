"""The distributed tests' harness: N gloo ranks in-process (see scaling.distributed.spawn)."""

from scaling.distributed.spawn import free_port, run_ranks

__all__ = ["free_port", "run_ranks"]
