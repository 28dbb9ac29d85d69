"""A built wheel works anywhere: build it from the package sources alone, install it into a bare target
directory, and from a directory that is not the checkout run a preset lookup and a 2-rank training job through
the launch plan (every rank is `python -m scaling.rank` from the installed package)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The wheel, installed with --target (its dependencies come from this environment)."""
    root = tmp_path_factory.mktemp("wheel")
    # Only what the build reads, copied: the build leaves nothing in the checkout, and a stray file there
    # (build/, a module outside the package) cannot reach the wheel.
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "scaling", src / "scaling", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    built = run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(root / "dist")],
                cwd=root, env=env, timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (root / "dist").glob("scaling-*.whl")
    installed = run([*pip, "install", "--no-deps", "--target", str(root / "site"), str(wheel)],
                    cwd=root, env=env, timeout=300)  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    return root / "site"


def outside_env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def test_installed_wheel_finds_presets_and_trains_on_two_ranks(site, tmp_path, small_corpus, clm_tokenizer):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = outside_env(site)
    where = run([sys.executable, "-c", "import scaling; print(scaling.__file__)"], elsewhere, env, 60)
    assert where.stdout.strip() == str(site / "scaling" / "__init__.py"), where.stdout + where.stderr

    shown = run([sys.executable, "-m", "scaling", "config", "show", "zero3"], elsewhere, env, 120)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert json.loads(shown.stdout)["zero_optimization"]["stage"] == 3

    out = elsewhere / "run"
    trained = run([
        sys.executable, "-m", "scaling", "train", "--num-gpus", "2", "--master-port", str(free_port()),
        "--model", "tiny-gpt2", "--data", str(small_corpus), "--tokenizer", str(clm_tokenizer),
        "--output", str(out), "--ds-config", "zero2", "--precision", "fp32", "--seq-len", "32",
        "--micro-batch", "2", "--max-steps", "2", "--log-every", "1", "--no-progress", "--no-tensorboard",
        "--no-export",
    ], elsewhere, env, 300)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-4000:]
    assert "-m scaling.rank" in trained.stderr or "--module scaling.rank" in trained.stderr
    assert json.loads((out / "run_config.json").read_text())["world_size"] == 2
    steps = [
        json.loads(line)["step"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if "loss" in line
    ]
    assert steps[-1] == 2
