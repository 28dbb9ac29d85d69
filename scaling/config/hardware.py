"""Checks of a resolved run against the machine its ranks run on, before any of them starts.

What DeepSpeed would otherwise find only inside every rank, after start-up (fp16 on a CPU: 26 s and a
traceback per rank), or never (an NVMe swap directory that cannot be written until the first offload).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scaling.config.device import BF16_MIN_CAPABILITY, Devices
from scaling.errors import Problem

NVME_SECTIONS = ("zero_optimization.offload_optimizer", "zero_optimization.offload_param")
"""DeepSpeed sections whose `nvme_path` is written when their `device` is nvme."""


def hardware_problems(
    *,
    precision: str,
    precision_source: str,
    deepspeed: dict[str, Any],
    output: str | os.PathLike,
    ranks_here: int | None,
    devices: Devices,
) -> list[Problem]:
    """Every way this machine cannot run the resolved run, each with its fix.

    `ranks_here`: ranks the run starts on this machine (None: a launcher placed them, and each may see only
    its own GPU); `precision_source`: where the precision came from
    (an option or the DeepSpeed JSON), named in the message.
    """
    problems = []
    by_option = "--precision" in precision_source
    if precision == "fp16" and not devices.fp16:
        problems.append(
            Problem(
                "--precision",
                f"fp16 ({precision_source}) needs a GPU and {devices.describe()} (DeepSpeed's CPU accelerator "
                "has no fp16)",
                precision,
                fix="use --precision bf16 or fp32 on CPU"
                if by_option
                else f"switch fp16 off where it is set ({precision_source}); bf16 and fp32 run on CPU",
            )
        )
    if precision == "bf16" and not devices.bf16:
        problems.append(
            Problem(
                "--precision",
                f"bf16 ({precision_source}) needs GPUs of compute capability {BF16_MIN_CAPABILITY}.0 (Ampere) or "
                f"newer and {devices.describe()}",
                precision,
                fix="use --precision fp16 (or fp32) on these GPUs"
                if by_option
                else f"switch bf16 off where it is set ({precision_source}); fp16 and fp32 run on these GPUs",
            )
        )
    if devices.gpus and ranks_here is not None and ranks_here > devices.gpus:
        problems.append(
            Problem(
                "--num-gpus",
                f"{ranks_here} ranks on this machine but {devices.describe()}; one rank per GPU",
                ranks_here,
                fix=f"start at most {devices.gpus} ranks per node (or make more GPUs visible: CUDA_VISIBLE_DEVICES)",
            )
        )
    problems.extend(_path_problems(deepspeed, output))
    return problems


def _path_problems(deepspeed: dict[str, Any], output: str | os.PathLike) -> list[Problem]:
    problems = []
    zero = deepspeed.get("zero_optimization")
    for section in NVME_SECTIONS:
        node = zero.get(section.split(".")[1]) if isinstance(zero, dict) else None
        if not isinstance(node, dict) or str(node.get("device", "")).lower() != "nvme":
            continue
        path = node.get("nvme_path")
        if not isinstance(path, str) or not path:
            problems.append(
                Problem(
                    f"{section}.nvme_path",
                    "device nvme needs an nvme_path",
                    path,
                    fix="name a local NVMe directory",
                )
            )
            continue
        why = unwritable(path)
        if why:
            problems.append(
                Problem(
                    f"{section}.nvme_path",
                    why,
                    path,
                    fix="point it at a writable directory on a local NVMe disk",
                )
            )
    why = unwritable(output)
    if why:
        problems.append(Problem("--output", why, str(output), fix="choose a directory you can write to"))
    return problems


def unwritable(path: str | os.PathLike) -> str:
    """Why files cannot be created at or under `path` (created if missing), or '' when they can."""
    target = Path(path).expanduser().absolute()
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            return "no existing parent directory"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == target else f" (the nearest existing directory, {probe})"
        return f"not writable{where}"
    return ""
