#!/usr/bin/env python
"""Per-rank entry for launchers that start every rank themselves (srun, mpirun): translate the scheduler's
description of this process into the RANK/LOCAL_RANK/WORLD_SIZE/LOCAL_SIZE contract that deepspeed's
launch.py provides, then run launchers/train.py's command. MASTER_ADDR/MASTER_PORT arrive through the run's
`.deepspeed_env` (exported by DeepSpeed's runner to every rank).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping

# (our name, the scheduler variables that carry it, in order of preference)
_SOURCES = {
    "RANK": ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK"),
    "LOCAL_RANK": (
        "SLURM_LOCALID",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MV2_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
    ),
    "WORLD_SIZE": ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMI_SIZE"),
    "LOCAL_SIZE": ("OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"),
}


def place_from_scheduler(environ: Mapping[str, str]) -> dict[str, str]:
    """RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_SIZE from srun's or mpirun's variables (those already set win)."""
    out: dict[str, str] = {}
    for name, sources in _SOURCES.items():
        if name in environ:
            continue
        for source in sources:
            if source in environ:
                out[name] = environ[source]
                break
    if "LOCAL_SIZE" not in environ and "LOCAL_SIZE" not in out and "SLURM_TASKS_PER_NODE" in environ:
        # "4(x2),3": tasks on the first nodes; every node of a homogeneous job has the first figure
        match = re.match(r"\d+", environ["SLURM_TASKS_PER_NODE"])
        if match:
            out["LOCAL_SIZE"] = match.group(0)
    return out


def apply(environ: MutableMapping[str, str]) -> None:
    environ.update(place_from_scheduler(environ))


if __name__ == "__main__":
    apply(os.environ)
    from scaling.cli.train import train

    train(prog_name="launchers/train.py")
