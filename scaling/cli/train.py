"""`scaling train` and the per-rank entry point that the deepspeed launcher runs (launchers/train.py).

Three ways in, one resolution:
- `scaling train ARGS` (no launcher): resolve, prepare, train in this process.
- `scaling train --num-gpus N ARGS` / `--hostfile H`: resolve and prepare here, write OUTPUT/run_config.json,
  then start `deepspeed ... launchers/train.py --resolved-config OUTPUT/run_config.json` on every rank.
- `deepspeed ... launchers/train.py ARGS`: every rank validates the options (cheap, before any process
  group); rank 0 prepares the run and the others read its resolved config.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from scaling.cli.train_options import explicit_options, run_options, run_request_from_options
from scaling.errors import UserError


@click.command("train", context_settings={"show_default": True})
@run_options
@click.option(
    "--num-gpus",
    type=click.IntRange(min=1),
    default=None,
    help="Start this many ranks per node via deepspeed.",
)
@click.option("--num-nodes", type=click.IntRange(min=1), default=None, help="Nodes (with --hostfile).")
@click.option(
    "--hostfile", type=click.Path(dir_okay=False), default=None, help="DeepSpeed hostfile for multi-node."
)
@click.option(
    "--master-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Rendezvous port of rank 0 (default: a free one).",
)
# Only rank 0 reads the file (see _run_rank_from_file): other nodes need not see it yet.
@click.option("--resolved-config", type=click.Path(dir_okay=False), default=None, hidden=True)
@click.option("--init-timeout", type=click.FloatRange(min=1), default=None, hidden=True)
@click.option("--local_rank", "--local-rank", "local_rank", type=int, default=-1, hidden=True)
@click.pass_context
def train(ctx: click.Context, **params: Any) -> None:
    """Train an HF model with DeepSpeed."""
    from scaling.distributed import LaunchEnv

    env = LaunchEnv.from_environ(local_rank=params["local_rank"])
    try:
        if params["resolved_config"]:
            _run_rank_from_file(Path(params["resolved_config"]), env, params["init_timeout"])
            return
        launching = (params["num_gpus"] or params["hostfile"]) and not env.launched
        world = _planned_world(params) if launching else env.world_size
        per_node = params["num_gpus"] if launching else env.local_world_size
        request = run_request_from_options(
            params, world_size=world, explicit=explicit_options(ctx), gpus_per_node=per_node
        )
        if launching:
            sys.exit(_launch(request, params))
        if env.world_size > 1:
            _run_rank_from_options(request, env)
        else:
            _run_single(request)
    except UserError as err:
        raise click.UsageError(str(err)) from None


def _planned_world(params: dict[str, Any]) -> int:
    from scaling.launch.hostfile import world_size_of

    if params["hostfile"]:
        return world_size_of(
            Path(params["hostfile"]), num_nodes=params["num_nodes"], num_gpus=params["num_gpus"]
        )
    return params["num_gpus"] * (params["num_nodes"] or 1)


def _run_single(request: Any) -> None:
    from scaling.distributed import LaunchEnv
    from scaling.engine.prepare import materialize

    run = materialize(request)
    env = LaunchEnv(master_port=_free_port())
    _train_and_report(run, env)


def _run_rank_from_file(path: Path, env: Any, init_timeout_s: float | None) -> None:
    """Started by `scaling launch`/`scaling train --num-gpus`: join the group, then take rank 0's config.

    With --no-ssh the ranks of other nodes can start before the launching host has written the file, or see
    an older one from the run being resumed; rank 0 starts only after it was written, so its copy is the run.
    """
    import json

    from scaling.config.run import RunConfig
    from scaling.config.sections import ParallelConfig
    from scaling.engine import dist as dist_setup

    if env.world_size == 1:
        _train_and_report(RunConfig.load(path), env)
        return
    timeout = init_timeout_s or ParallelConfig().init_timeout_s
    dist_setup.init_process_group(env, timeout_s=timeout)
    try:
        text = dist_setup.from_rank0(lambda: _read_resolved(path), rank=env.rank)
    except UserError:
        dist_setup.teardown()
        raise
    _train_and_report(RunConfig.from_dict(json.loads(text)), env)


def _read_resolved(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"--resolved-config: cannot read {path}: {err}") from None


def _run_rank_from_options(request: Any, env: Any) -> None:
    """Started by `deepspeed launchers/train.py ARGS`: validate everywhere, prepare on rank 0 only."""
    from scaling.config.run import RunConfig
    from scaling.engine import dist as dist_setup
    from scaling.engine.prepare import materialize, validate

    validate(request)  # every rank fails fast, and identically, on a bad option
    dist_setup.init_process_group(env, timeout_s=request.parallel.init_timeout_s)
    try:
        dist_setup.on_rank0(lambda: materialize(request), rank=env.rank)
    except UserError:
        dist_setup.teardown()
        raise
    run = RunConfig.load(Path(request.checkpoint.output) / "run_config.json")
    _train_and_report(run, env)


def _train_and_report(run: Any, env: Any) -> None:
    from scaling.engine.trainer import EXIT_PREEMPTED, Preempted, train

    _limit_threads(env)
    try:
        result = train(run, env)
    except Preempted as stop:
        if env.rank == 0:
            click.echo(str(stop), err=True)
        sys.exit(EXIT_PREEMPTED)
    if env.rank == 0:
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
        click.echo(f"done: step {result.final_step}, loss {loss}, checkpoint {result.checkpoint}")
        if result.export_dir:
            click.echo(f"HF model: {result.export_dir}")


def _limit_threads(env: Any) -> None:
    # Ranks on one node share its cores; letting each spawn a thread per core oversubscribes them
    # (measured 2.5-3x slower on 2 cores). The deepspeed launcher only sets this with --bind_cores_to_rank.
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, env.local_world_size)))


def _launch(request: Any, params: dict[str, Any]) -> int:
    """Prepare on this host, then hand the resolved run to the deepspeed launcher (as `scaling launch`)."""
    from scaling.engine.prepare import materialize
    from scaling.launch.command import LaunchSpec, build_plan
    from scaling.launch.supervise import run_plan

    spec = LaunchSpec(
        hostfile=Path(params["hostfile"]) if params["hostfile"] else None,
        num_nodes=params["num_nodes"],
        num_gpus=params["num_gpus"],
        master_port=params["master_port"] or _free_port(),
    )
    run = materialize(request)
    config_path = (run.output / "run_config.json").resolve()
    plan = build_plan(spec, ["--resolved-config", str(config_path)], run_dir=run.output)
    return run_plan(plan, output=run.output)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
