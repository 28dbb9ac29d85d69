"""One launch path for every kind of job (train, distill; later sft and dpo).

A job goes: options -> request -> prepared once (on the launching host, or on rank 0 when a launcher we did not
plan started the ranks) -> resolved config files in the run directory -> launch plan -> `python -m scaling.rank
KIND --resolved-config OUTPUT/run_config.json` on every rank, which trains from rank 0's copy of those files.
`scaling train`, `scaling compress distill`, `scaling launch -- KIND`, the rank entry and launchers/*.py all go
through `run_job` / `launch_prepared` below; a `JobKind` holds only what differs between kinds.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from scaling.config.run import RUN_CONFIG_FILE
from scaling.errors import UserError

if TYPE_CHECKING:
    from scaling.config.run import RunConfig
    from scaling.distributed.env import LaunchEnv
    from scaling.engine.prepare import RunRequest
    from scaling.engine.trainer import TrainResult
    from scaling.launch.command import LaunchSpec

# The file every rank is pointed at (written by prepare); a kind's other resolved files lie beside it.
RUN_CONFIG = RUN_CONFIG_FILE

KINDS: dict[str, str] = {"train": "scaling.cli.train:JOB", "distill": "scaling.cli.distill:JOB"}
"""Job kind -> where its `JobKind` is defined (imported on use: the rank entry loads only its own kind)."""


@dataclass(frozen=True)
class JobRequest:
    """A job as the user asked for it, before anything is derived or written."""

    run: RunRequest
    """The training run: model, data, optimizer, checkpoints, parallel layout, world size."""
    objective: Any = None
    """The kind's own settings (a DistillConfig for distill; None for plain training)."""


@dataclass(frozen=True)
class JobKind:
    """What differs between job kinds; everything else (dispatch, launch, rank start-up) is shared."""

    name: str
    """The word after `scaling launch --` and `python -m scaling.rank`."""
    command: str
    """`module:attribute` of the Click command whose options describe the job."""
    request: Callable[[click.Context, int, int | None], JobRequest]
    """Parsed options (the context of `command`), world size and ranks per node -> the request."""
    check: Callable[[JobRequest], RunConfig | None]
    """Cheap checks, no output written; every rank runs them before the process group. Returns the run as
    far as it can be resolved without preparing (for memory estimates), or None."""
    prepare: Callable[[JobRequest], Path]
    """Once per run: resolve, build what must exist once, write the resolved files; returns the run directory."""
    files: tuple[str, ...]
    """The resolved files in the run directory that define the job on a rank (RUN_CONFIG first)."""
    train: Callable[[Mapping[str, str], LaunchEnv], TrainResult]
    """Train as this rank from the resolved files' texts (name -> text)."""
    summary: Callable[[TrainResult], list[str]]
    """What rank 0 prints when the job finished."""

    def click_command(self) -> click.Command:
        module, attribute = self.command.split(":")
        return getattr(importlib.import_module(module), attribute)


def job_kind(name: str) -> JobKind:
    if name not in KINDS:
        raise UserError(f"unknown job kind {name!r}: expected one of {', '.join(KINDS)}")
    module, attribute = KINDS[name].split(":")
    kind = getattr(importlib.import_module(module), attribute)
    assert isinstance(kind, JobKind) and kind.name == name
    return kind


def rank_args(kind: JobKind, run_config: Path, *, init_timeout_s: float | None = None) -> list[str]:
    """The arguments of the rank entry (`python -m scaling.rank ARGS`) for a prepared job."""
    args = [kind.name, "--resolved-config", str(run_config)]
    if init_timeout_s is not None:
        args += ["--init-timeout", str(init_timeout_s)]
    return args


def on_hosts(request: JobRequest, spec: LaunchSpec) -> JobRequest:
    """The request with where its ranks run: this machine's devices are checked against the run only when
    every selected host is this machine."""
    from scaling.launch.command import select_resources

    if spec.hostfile is None or all(_is_this_host(host) for host in select_resources(spec)):
        return request
    return replace(request, run=replace(request.run, ranks_here=False))


def _is_this_host(host: str) -> bool:
    # getfqdn last: it may wait on DNS
    return (
        host == "localhost"
        or host.startswith("127.")
        or host == socket.gethostname()
        or host == socket.getfqdn()
    )


def with_init_timeout(request: JobRequest, timeout_s: float) -> JobRequest:
    parallel = replace(request.run.parallel, init_timeout_s=timeout_s)
    return replace(request, run=replace(request.run, parallel=parallel))


# -- the options and the body of every job command --------------------------------------------------------------------------


JOB_LAUNCH_FIELDS = ("num_gpus", "num_nodes", "hostfile", "master_port")
"""The LaunchSpec fields a job command takes itself (`scaling launch` takes them all)."""


def job_launch_options(func: Any) -> Any:
    """The options every job command has besides its run options: how to start its ranks (LaunchSpec's), and
    the hidden ones a launch plan and the deepspeed launcher pass to each rank."""
    from scaling.config.cli_options import section_options, with_options
    from scaling.launch.command import LaunchSpec

    # Only rank 0 reads the file (see rank_from_file): other nodes need not see it yet, so no exists check.
    hidden = [
        click.Option(["--resolved-config"], type=click.Path(dir_okay=False), default=None, hidden=True),
        click.Option(["--init-timeout"], type=click.FloatRange(min=1), default=None, hidden=True),
        click.Option(["--local_rank", "--local-rank", "local_rank"], type=int, default=-1, hidden=True),
    ]
    return with_options(section_options(LaunchSpec, only=JOB_LAUNCH_FIELDS), hidden)(func)


def run_job(kind: JobKind, ctx: click.Context, params: dict[str, Any]) -> None:
    """`scaling train`, `scaling compress distill` and every rank entry: decide from the options and the
    environment whether this process launches the ranks, is one of them, or is the whole (1-rank) job."""
    from scaling.distributed import LaunchEnv

    env = LaunchEnv.from_environ(local_rank=params["local_rank"])
    if env.launched:
        from scaling.launch.watch import watch_launchers

        watch_launchers()  # a launcher that dies stops this rank like SIGTERM (saved, exit 75)
    job: Callable[[], TrainResult]
    if params["resolved_config"]:
        path = Path(params["resolved_config"])
        job = partial(rank_from_file, kind, path, env, params["init_timeout"])
    else:
        launching = bool(params["num_gpus"] or params["hostfile"]) and not env.launched
        world = _planned_world(params) if launching else env.world_size
        per_node = params["num_gpus"] if launching else env.local_world_size
        request = kind.request(ctx, world, per_node)
        if launching:
            spec = _local_spec(params)
            sys.exit(launch_prepared(kind, on_hosts(request, spec), spec))
        if env.launched:
            request = replace(request, run=replace(request.run, ranks_placed=True))
        job = (
            partial(rank_from_request, kind, request, env)
            if env.world_size > 1
            else partial(run_single, kind, request)
        )
    _finish(kind, job, env)


def _finish(kind: JobKind, train: Callable[[], TrainResult], env: LaunchEnv) -> None:
    """Exit 75 on preemption (every rank saved; the launching host's supervisor sees the reports)."""
    from scaling.engine.trainer import Preempted
    from scaling.launch.status import EXIT_PREEMPTED

    try:
        result = train()
    except Preempted as stop:
        if env.rank == 0:
            click.echo(str(stop), err=True)
        sys.exit(EXIT_PREEMPTED)
    if env.rank == 0:
        for line in kind.summary(result):
            click.echo(line)


def launch_prepared(kind: JobKind, request: JobRequest, spec: LaunchSpec) -> int:
    """Prepare here, then start the ranks through the launch plan; the run's exit code (0, 75 or failure)."""
    from scaling.launch.command import build_plan
    from scaling.launch.supervise import run_plan

    run_dir = kind.prepare(request)
    run_config = (run_dir / RUN_CONFIG).resolve()
    plan = build_plan(spec, rank_args(kind, run_config), run_dir=run_dir)
    return run_plan(plan, output=run_dir)


def run_single(kind: JobKind, request: JobRequest) -> TrainResult:
    """The whole job in this process, as its only rank (no launcher)."""
    from scaling.distributed import LaunchEnv

    run_dir = kind.prepare(request)
    texts = read_resolved(kind, run_dir / RUN_CONFIG)
    return train_rank(kind, texts, LaunchEnv(master_port=free_port()))


def rank_from_file(
    kind: JobKind, run_config: Path, env: LaunchEnv, init_timeout_s: float | None
) -> TrainResult:
    """A rank started by a launch plan: join the group, then train from rank 0's copy of the resolved files.

    With --no-ssh the ranks of other nodes can start before the launching host has written the files, or see
    older ones from the run being resumed; rank 0 starts only after they were written, so its copy is the run.
    """
    from scaling.config.sections import ParallelConfig
    from scaling.engine import dist as dist_setup
    from scaling.engine.run_dir import adopt_run_dir

    if env.world_size == 1:
        return train_rank(kind, read_resolved(kind, run_config), env)
    dist_setup.init_process_group(env, timeout_s=init_timeout_s or ParallelConfig().init_timeout_s)
    with _closing_on_failure():
        texts = dist_setup.from_rank0(lambda: read_resolved(kind, run_config), rank=env.rank)
        texts = adopt_run_dir(texts, run_config.parent.resolve(), env)
    return train_rank(kind, texts, env)


def rank_from_request(kind: JobKind, request: JobRequest, env: LaunchEnv) -> TrainResult:
    """A rank started by a launcher with the job's options (`deepspeed -m scaling.rank train ARGS`, `srun`):
    every rank checks the options (fast, identical failures), rank 0 prepares, all train from its files."""
    from scaling.engine import dist as dist_setup
    from scaling.engine.run_dir import adopt_run_dir

    kind.check(request)
    dist_setup.init_process_group(env, timeout_s=request.run.parallel.init_timeout_s)
    with _closing_on_failure():
        texts = dist_setup.from_rank0(
            lambda: read_resolved(kind, kind.prepare(request) / RUN_CONFIG), rank=env.rank
        )
        texts = adopt_run_dir(texts, Path(request.run.checkpoint.output).resolve(), env)
    return train_rank(kind, texts, env)


@contextmanager
def _closing_on_failure() -> Iterator[None]:
    """Close the process group when start-up fails: in order after a UserError (every rank raises it together),
    without a closing barrier after a bug (rank 0's traceback is the report; its peers raise PeerFailed)."""
    from scaling.engine import dist as dist_setup

    try:
        yield
    except UserError:
        dist_setup.teardown()
        raise
    except BaseException:
        dist_setup.abandon()
        raise


def read_resolved(kind: JobKind, run_config: Path) -> dict[str, str]:
    """The texts of the job's resolved files: `run_config` and its siblings named by the kind."""
    texts = {}
    for name in kind.files:
        path = run_config if name == RUN_CONFIG else run_config.with_name(name)
        try:
            texts[name] = path.read_text(encoding="utf-8")
        except OSError as err:
            raise UserError(f"--resolved-config: cannot read {path}: {err}") from None
    return texts


def train_rank(kind: JobKind, texts: Mapping[str, str], env: LaunchEnv) -> TrainResult:
    from scaling.logs import setup_logging

    limit_threads(env)
    # Every rank keeps its own log in the run directory; only rank 0 speaks on the console below warnings.
    setup_logging(env.rank, run_dir=run_config_from(texts).output, world_size=env.world_size)
    return kind.train(texts, env)


def result_summary(
    result: TrainResult, *, model_label: str = "HF model", with_eval: bool = False
) -> list[str]:
    """What rank 0 prints when a job ends: the last step and loss, the checkpoint, eval figures, the export."""
    loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
    lines = [f"done: step {result.final_step}, loss {loss}, checkpoint {result.checkpoint}"]
    if with_eval:
        lines += [f"{key}: {value:.4f}" for key, value in sorted(result.eval.items())]
    if result.export_dir:
        lines.append(f"{model_label}: {result.export_dir}")
    return lines


def run_config_from(texts: Mapping[str, str]) -> RunConfig:
    from scaling.config.run import RunConfig

    return RunConfig.from_dict(json.loads(texts[RUN_CONFIG]))


def limit_threads(env: LaunchEnv) -> None:
    # Ranks on one node share its cores; letting each spawn a thread per core oversubscribes them
    # (measured 2.5-3x slower on 2 cores). The deepspeed launcher only sets this with --bind_cores_to_rank.
    # Only ever lower it: a smaller OMP_NUM_THREADS the user (or a test) set stays.
    import torch

    if not torch.cuda.is_available():
        share = max(1, (os.cpu_count() or 1) // max(1, env.local_world_size))
        torch.set_num_threads(min(torch.get_num_threads(), share))


def _local_spec(params: dict[str, Any]) -> LaunchSpec:
    from scaling.config.cli_options import from_params
    from scaling.launch.command import LaunchSpec

    spec = from_params(LaunchSpec, params)
    return replace(spec, master_port=spec.master_port or free_port())


def _planned_world(params: dict[str, Any]) -> int:
    from scaling.launch.hostfile import world_size_of

    if params["hostfile"]:
        return world_size_of(
            Path(params["hostfile"]), num_nodes=params["num_nodes"], num_gpus=params["num_gpus"]
        )
    return params["num_gpus"] * (params["num_nodes"] or 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
