"""The one entry every rank of every job runs: `python -m scaling.rank KIND ARGS`.

    deepspeed --num_gpus 2 --module scaling.rank train --model tiny-gpt2 --data corpus.txt --output runs/x
    srun python -m scaling.rank distill --teacher runs/big/final --student-layers 3 --data d.txt --output runs/s
    python -m scaling.rank train --resolved-config runs/x/run_config.json     # what a launch plan starts

KIND is a job kind (`train`, `distill`) and ARGS are the options of its command (`scaling train`, `scaling
compress distill`), or `--resolved-config` for a prepared run. Launchers that start every rank themselves
(srun, mpirun) describe the rank in their own variables; they are translated here into the RANK, LOCAL_RANK,
WORLD_SIZE and LOCAL_SIZE contract that deepspeed's launch.py provides. MASTER_ADDR/MASTER_PORT arrive through
the run's `.deepspeed_env` (or the job script). The deepspeed launcher puts `--local_rank=N` before KIND.
"""

from __future__ import annotations

import os
import re
import sys
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
USAGE = "usage: python -m scaling.rank KIND [OPTIONS]  (KIND: train, distill; OPTIONS: those of the command)"


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


def apply_scheduler_place(environ: MutableMapping[str, str]) -> None:
    environ.update(place_from_scheduler(environ))


def split_args(argv: list[str]) -> tuple[str | None, list[str]]:
    """(KIND, the command's arguments); `--local_rank=N` may come first (deepspeed's launch.py puts it there)."""
    local = [a for a in argv if a.startswith(("--local_rank=", "--local-rank="))]
    rest = [a for a in argv if a not in local]
    if not rest or rest[0].startswith("-"):
        return None, argv
    return rest[0], [*rest[1:], *local]


def main(argv: list[str] | None = None, *, prog_name: str | None = None) -> None:
    from scaling.logs import install_noise_filters, survive_lost_console

    survive_lost_console()  # our stdout is a pipe to `scaling launch`, which may be killed before we save
    install_noise_filters()  # before torch, torchao and deepspeed are imported: some speak at import time
    args = sys.argv[1:] if argv is None else list(argv)
    name, command_args = split_args(args)
    from scaling.launch.job import KINDS, job_kind

    if name not in KINDS:
        print(f"{USAGE}\nerror: expected a job kind first, got {name or ' '.join(args)!r}", file=sys.stderr)
        sys.exit(2)
    apply_scheduler_place(os.environ)
    from scaling.cli.main import run_command

    command = job_kind(name).click_command()
    run_command(command, prog_name=prog_name or f"python -m scaling.rank {name}", args=command_args)


if __name__ == "__main__":
    main()
