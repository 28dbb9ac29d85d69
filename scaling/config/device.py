"""The one answer to "can this process use a GPU?", for resolution (`scaling config`, `scaling train`)."""

from __future__ import annotations

import sys
from pathlib import Path

# Device nodes a CUDA (NVIDIA), ROCm (AMD) or WSL GPU needs on Linux: without any of them torch cannot see a
# device either, so the answer needs no torch import (about 2 s) on the CPU-only machines that ask most.
_LINUX_GPU_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def cuda_available() -> bool:
    """What `torch.cuda.is_available()` says, without importing torch where no GPU device node exists."""
    if sys.platform.startswith("linux") and not any(Path(node).exists() for node in _LINUX_GPU_NODES):
        return False
    import torch

    return torch.cuda.is_available()
