"""One device probe (scaling.config.device) answers like torch, and without torch where no GPU node exists."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scaling.config import device


def test_probe_agrees_with_torch_when_a_device_node_exists(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(device, "_LINUX_GPU_NODES", ("/",))  # "a node exists": the probe must ask torch
    assert device.cuda_available() is torch.cuda.is_available()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the device-node shortcut is Linux's")
def test_probe_without_device_nodes_says_no_without_importing_torch() -> None:
    code = (
        "import sys; from scaling.config import device\n"
        "device._LINUX_GPU_NODES = ('/nonexistent/nvidiactl',)\n"
        "print(device.cuda_available(), 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False False"


def test_resolution_asks_the_probe_when_the_machine_is_not_stated(monkeypatch) -> None:
    from scaling.config.deepspeed import RunValues, resolve_deepspeed

    for gpu in (True, False):
        monkeypatch.setattr(device, "cuda_available", lambda gpu=gpu: gpu)
        params = resolve_deepspeed("zero2", [], RunValues(cpu_only=None)).config["optimizer"]["params"]
        assert params["torch_adam"] is True and ("fused" in params) is gpu  # fused: torch's CUDA kernel
