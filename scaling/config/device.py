"""The one answer to "what can this machine compute on?", for resolution (`scaling config`, `scaling train`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

# Device nodes a CUDA (NVIDIA), ROCm (AMD) or WSL GPU needs on Linux: without any of them torch cannot see a
# device either, so the answer needs no torch import (about 2 s) on the CPU-only machines that ask most.
_LINUX_GPU_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")
BF16_MIN_CAPABILITY = 8
"""CUDA compute capability from which bf16 runs natively (Ampere); older GPUs only emulate it, if at all."""


@dataclass(frozen=True)
class Devices:
    """The accelerators this process can use (CUDA_VISIBLE_DEVICES applied)."""

    gpus: int = 0
    """Visible GPUs; 0: ranks run on the CPU."""
    names: tuple[str, ...] = ()
    """Each GPU's name, for messages."""
    bf16: bool = True
    """Every visible GPU computes bf16 natively (the CPU does: DeepSpeed's CPU accelerator supports it)."""

    @property
    def fp16(self) -> bool:
        """fp16 training needs a GPU: DeepSpeed's CPU accelerator refuses it ("Type fp16 is not supported")."""
        return self.gpus > 0

    def describe(self) -> str:
        if not self.gpus:
            return "this machine has no GPU"
        kinds = sorted(set(self.names))
        return f"this machine has {self.gpus} GPU(s) visible ({', '.join(kinds)})"


def cuda_available() -> bool:
    """What `torch.cuda.is_available()` says, without importing torch where no GPU device node exists."""
    if sys.platform.startswith("linux") and not any(Path(node).exists() for node in _LINUX_GPU_NODES):
        return False
    import torch

    return torch.cuda.is_available()


def probe() -> Devices:
    """The visible GPUs and what they compute natively; no torch import on a machine without GPU nodes."""
    if not cuda_available():
        return Devices()
    import torch

    count = torch.cuda.device_count()
    names = tuple(torch.cuda.get_device_name(i) for i in range(count))
    bf16 = bool(torch.version.hip) or all(
        torch.cuda.get_device_capability(i)[0] >= BF16_MIN_CAPABILITY for i in range(count)
    )
    return Devices(gpus=count, names=names, bf16=bf16)
