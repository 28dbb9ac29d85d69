"""Hardware checks at resolution: the run against the machine its ranks start on, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaling.config import device
from scaling.config.device import Devices
from scaling.config.hardware import hardware_problems, unwritable
from scaling.config.run import resolve_run
from scaling.config.sections import (
    CheckpointConfig,
    DeepSpeedSource,
    LogConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
)
from scaling.data.config import DataConfig
from scaling.errors import ConfigError

V100S = Devices(gpus=2, names=("Tesla V100-SXM2-32GB",) * 2, bf16=False)
A100S = Devices(gpus=2, names=("NVIDIA A100-SXM4-80GB",) * 2, bf16=True)


def check(
    precision: str, devices: Devices, *, ranks: int | None = 1, ds: dict | None = None, output: str = "/tmp"
):
    return hardware_problems(
        precision=precision,
        precision_source="option --precision",
        deepspeed=ds or {},
        output=output,
        ranks_here=ranks,
        devices=devices,
    )


def test_fp16_on_cpu_is_refused_with_the_fix() -> None:
    (problem,) = check("fp16", Devices())
    assert problem.path == "--precision" and "needs a GPU" in problem.message and "no GPU" in problem.message
    assert "bf16 or fp32" in problem.fix
    assert check("bf16", Devices()) == [] and check("fp32", Devices()) == []  # the CPU runs both


def test_bf16_on_gpus_without_native_bf16_is_refused() -> None:
    (problem,) = check("bf16", V100S)
    assert "8.0" in problem.message and "V100" in problem.message and "fp16" in problem.fix
    assert check("fp16", V100S) == [] and check("bf16", A100S) == []


def test_more_ranks_than_gpus_is_refused_but_cpu_ranks_are_processes() -> None:
    (problem,) = check("bf16", A100S, ranks=4)
    assert problem.path == "--num-gpus" and problem.value == 4 and "at most 2" in problem.fix
    assert check("bf16", A100S, ranks=2) == []
    assert check("bf16", Devices(), ranks=8) == []
    # Ranks a launcher placed (srun --gpus-per-task=1) may each see only their own GPU: not counted.
    assert check("bf16", Devices(gpus=1, names=("NVIDIA H200",)), ranks=None) == []


def test_unwritable_nvme_and_output_paths_are_all_reported(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    ds = {
        "zero_optimization": {
            "offload_optimizer": {"device": "nvme", "nvme_path": str(a_file / "swap")},
            "offload_param": {"device": "nvme"},
        }
    }
    problems = check("fp16", Devices(), ds=ds, output=str(a_file / "run"))
    paths = [p.path for p in problems]
    assert paths == [
        "--precision",
        "zero_optimization.offload_optimizer.nvme_path",
        "zero_optimization.offload_param.nvme_path",
        "--output",
    ]
    assert "is not a directory" in problems[1].message and "needs an nvme_path" in problems[2].message
    # A missing directory under a writable one will be created: fine.
    assert unwritable(tmp_path / "new" / "deeper") == ""
    ds["zero_optimization"]["offload_optimizer"]["nvme_path"] = str(tmp_path / "swap")
    ds["zero_optimization"]["offload_param"]["device"] = "cpu"
    assert check("bf16", Devices(), ds=ds, output=str(tmp_path)) == []


def _resolve(tmp_path: Path, devices: Devices | None, **kw):
    args = {
        "model": ModelConfig(source="tiny-gpt2"),
        "data": DataConfig(train=["x.txt"]),
        "optim": OptimConfig(max_steps=2),
        "checkpoint": CheckpointConfig(output=str(tmp_path / "run")),
        "log": LogConfig(),
        "parallel": ParallelConfig(),
        "deepspeed_source": DeepSpeedSource(),
        "world_size": 1,
        "explicit": frozenset(),
        "hidden_size": 64,
        "total_steps": 2,
        "devices": devices,
    }
    args.update(kw)
    return resolve_run(**args)


def test_resolution_names_a_precision_the_json_chose(tmp_path: Path) -> None:
    fp16_json = DeepSpeedSource(config=None, overrides=["fp16.enabled=true", "bf16.enabled=false"])
    with pytest.raises(ConfigError) as err:
        _resolve(tmp_path, Devices(), deepspeed_source=fp16_json)
    (problem,) = err.value.problems
    assert (
        "fp16 (--set fp16.enabled=true) needs a GPU" in problem.message and "switch fp16 off" in problem.fix
    )
    # Elsewhere (a hostfile naming other hosts) this machine's devices are not the ranks'.
    assert _resolve(tmp_path, None, deepspeed_source=fp16_json).optim.precision == "fp16"


def test_resolution_reports_hardware_with_the_other_problems(tmp_path: Path) -> None:
    optim = OptimConfig(max_steps=0, precision="fp16")
    with pytest.raises(ConfigError) as err:
        _resolve(tmp_path, A100S, optim=optim, world_size=4, ranks_here=4, explicit=frozenset({"precision"}))
    text = str(err.value)
    assert "--max-steps" in text and "4 ranks on this machine" in text and "2 GPU(s)" in text


def test_probe_without_a_gpu_is_a_cpu_machine(monkeypatch) -> None:
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    assert device.probe() == Devices() and not device.probe().fp16 and device.probe().bf16


def test_only_ranks_on_this_machine_are_checked_against_its_devices(tmp_path: Path) -> None:
    from scaling.engine.prepare import RunRequest
    from scaling.launch.command import LaunchSpec
    from scaling.launch.job import JobRequest, on_hosts

    run = RunRequest(
        model=ModelConfig(source="tiny-gpt2"),
        data=DataConfig(train=["x.txt"]),
        optim=OptimConfig(max_steps=2),
        checkpoint=CheckpointConfig(output=str(tmp_path)),
        log=LogConfig(),
        parallel=ParallelConfig(),
        deepspeed_source=DeepSpeedSource(),
        world_size=2,
        explicit=frozenset(),
    )
    request = JobRequest(run=run)
    assert on_hosts(request, LaunchSpec(num_gpus=2)).run.ranks_here
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.write_text("localhost slots=2\n")
    remote.write_text("localhost slots=2\ngpu-node-17 slots=2\n")
    assert on_hosts(request, LaunchSpec(hostfile=local)).run.ranks_here
    assert not on_hosts(request, LaunchSpec(hostfile=remote)).run.ranks_here
