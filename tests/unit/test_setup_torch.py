"""`make setup` installs torch's CPU build on a Linux machine without a GPU (PyPI alone would give the CUDA
build, multi-GB nvidia-* wheels) and PyPI's CUDA build where nvidia-smi finds a GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.skipif(shutil.which("make") is None, reason="needs make"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU build rule is Linux's"),
]


def torch_install(path: str) -> tuple[str, str, str]:
    """TORCH_SPEC, TORCH_INDEX and the recipe line that installs torch, as make would run them."""
    env = dict(os.environ, PATH=path)
    env.pop("TORCH_SPEC", None)
    env.pop("TORCH_INDEX", None)
    show = ["make", "-s", "-C", str(REPO), "--eval", "show: ; @echo '$(TORCH_SPEC)|$(TORCH_INDEX)'", "show"]
    spec, index = (
        subprocess.run(show, env=env, capture_output=True, text=True, check=True).stdout.strip().split("|")
    )
    recipe = subprocess.run(["make", "-n", "-C", str(REPO), "BIN=/nowhere", "setup"], env=env, capture_output=True, text=True).stdout  # fmt: skip
    return spec, index, recipe


def test_without_a_gpu_the_cpu_build_comes_first_from_local_wheels_then_pytorch_index(tmp_path: Path) -> None:
    spec, index, recipe = torch_install(f"{tmp_path}:/usr/bin:/bin")  # no nvidia-smi on this PATH
    assert spec == "torch==2.13.0+cpu" and index == "https://download.pytorch.org/whl/cpu"
    assert 'pip install -q "torch==2.13.0+cpu" 2>/dev/null' in recipe  # a wheel pip already finds wins
    assert '--extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu"' in recipe


def test_with_a_gpu_pypi_cuda_build(tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200'\n")
    fake.chmod(0o755)
    spec, index, recipe = torch_install(f"{tmp_path}:/usr/bin:/bin")
    assert spec == "torch==2.13.0" and index == ""
    assert "--extra-index-url" not in recipe
