"""`scaling compress distill` and the per-rank entry point the deepspeed launcher runs (launchers/distill.py).

The same three ways in as `scaling train`, with the same options (minus --model: the student is --student or
--student-layers):
- `scaling compress distill ARGS`: prepare (teacher, student, tokenizer, run config) and distil in this process.
- `... --num-gpus N ARGS` / `--hostfile H`: prepare here, then start
  `deepspeed ... launchers/distill.py --resolved-config OUTPUT/run_config.json` on every rank.
- `deepspeed ... launchers/distill.py ARGS`: every rank checks the options, rank 0 prepares, all distil.

The command object is built on first use: `scaling compress --help` lists it without importing torch.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from scaling.errors import UserError

LAUNCHER_SCRIPT = Path(__file__).resolve().parents[2] / "launchers" / "distill.py"
SHORT_HELP = "Distil a teacher into a smaller student (a DeepSpeed training run)."
HELP = """Distil a frozen TEACHER into a STUDENT with DeepSpeed, like `scaling train` (same data, DeepSpeed
configs, checkpoints, --resume and launcher options).

The student is --student (HF directory, config.json or preset) or the teacher cut to --student-layers K
layers, initialised from the teacher's. Loss: alpha * task loss + (1 - alpha) * T^2 * KL(teacher || student),
plus optional hidden-state and attention-map MSE. OUTPUT/final is the student as a plain HF directory."""


def _distill_options(func: Any) -> Any:
    """The objective's options, generated from DistillConfig (defaults and help are its fields')."""
    from scaling.compress.distill import DistillConfig
    from scaling.config.cli_options import section_options, with_options

    return with_options(section_options(DistillConfig))(func)


def _build_command() -> click.Command:
    from scaling.cli.train_options import run_options

    @click.command("distill", context_settings={"show_default": True}, help=HELP)
    @_distill_options
    @run_options
    @click.option(
        "--num-gpus", type=click.IntRange(min=1), default=None, help="Ranks per node via deepspeed."
    )
    @click.option("--num-nodes", type=click.IntRange(min=1), default=None, help="Nodes (with --hostfile).")
    @click.option("--hostfile", type=click.Path(dir_okay=False), default=None, help="DeepSpeed hostfile.")
    @click.option(
        "--master-port",
        type=click.IntRange(1, 65535),
        default=None,
        help="Rendezvous port of rank 0 (default: a free one).",
    )
    @click.option(
        "--resolved-config", type=click.Path(dir_okay=False, exists=True), default=None, hidden=True
    )
    @click.option("--local_rank", "--local-rank", "local_rank", type=int, default=-1, hidden=True)
    @click.pass_context
    def command(ctx: click.Context, **params: Any) -> None:
        _main(ctx, params)

    # The student replaces --model; keeping a second way to name it would only invite contradictions.
    command.params = [p for p in command.params if p.name != "model"]
    return command


class _DeferredCommand(click.Command):
    """Takes its options and callback from `_build_command()` the first time it parses arguments."""

    def __init__(self) -> None:
        super().__init__("distill", help=HELP, short_help=SHORT_HELP, context_settings={"show_default": True})
        self._built = False

    def _ensure_built(self) -> None:
        if not self._built:
            real = _build_command()
            self.params = real.params
            self.callback = real.callback
            self._built = True

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        self._ensure_built()
        return super().make_context(info_name, args, parent=parent, **extra)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        self._ensure_built()
        return super().get_params(ctx)


distill = _DeferredCommand()


def _main(ctx: click.Context, params: dict[str, Any]) -> None:
    from scaling.cli.train import _planned_world
    from scaling.cli.train_options import explicit_options, run_request_from_options
    from scaling.distributed import LaunchEnv

    env = LaunchEnv.from_environ(local_rank=params["local_rank"])
    try:
        if params["resolved_config"]:
            _run_rank_from_file(Path(params["resolved_config"]), env)
            return
        if not params["teacher"]:
            raise UserError("--teacher is required")
        cfg = _distill_config(params)
        launching = (params["num_gpus"] or params["hostfile"]) and not env.launched
        world = _planned_world(params) if launching else env.world_size
        per_node = params["num_gpus"] if launching else env.local_world_size
        # The teacher stands in for --model until prepare() has the student.
        request = run_request_from_options(
            {**params, "model": params["teacher"]},
            world_size=world,
            explicit=explicit_options(ctx),
            gpus_per_node=per_node,
        )
        if launching:
            sys.exit(_launch(request, cfg, params))
        if env.world_size > 1:
            _run_rank_from_options(request, cfg, env)
        else:
            _run_single(request, cfg)
    except UserError as err:
        raise click.UsageError(str(err)) from None


def _distill_config(params: dict[str, Any]) -> Any:
    from scaling.compress.distill import DistillConfig
    from scaling.config.cli_options import from_params

    return from_params(DistillConfig, params)


def _run_single(request: Any, cfg: Any) -> None:
    from scaling.cli.train import _free_port
    from scaling.compress.distill import prepare
    from scaling.distributed import LaunchEnv

    run, resolved = prepare(request, cfg)
    _distill_and_report(run, resolved, LaunchEnv(master_port=_free_port()))


def _run_rank_from_file(path: Path, env: Any) -> None:
    from scaling.compress.distill import load_distill_config
    from scaling.config.run import RunConfig

    _distill_and_report(RunConfig.load(path), load_distill_config(path.parent), env)


def _run_rank_from_options(request: Any, cfg: Any, env: Any) -> None:
    """Started by `deepspeed launchers/distill.py ARGS`: check everywhere, prepare on rank 0 only."""
    from scaling.compress.distill import load_distill_config, prepare
    from scaling.config.run import RunConfig
    from scaling.engine import dist as dist_setup

    problems = cfg.problems()
    if problems:
        from scaling.errors import ConfigError

        raise ConfigError(problems, header="cannot start this distillation")
    dist_setup.init_process_group(env, timeout_s=request.parallel.init_timeout_s)
    try:
        dist_setup.on_rank0(lambda: prepare(request, cfg), rank=env.rank)
    except UserError:
        dist_setup.teardown()
        raise
    output = Path(request.checkpoint.output)
    _distill_and_report(RunConfig.load(output / "run_config.json"), load_distill_config(output), env)


def _distill_and_report(run: Any, cfg: Any, env: Any) -> None:
    from scaling.cli.train import _limit_threads
    from scaling.compress.distill import distill_train
    from scaling.engine.trainer import EXIT_PREEMPTED, Preempted

    _limit_threads(env)
    try:
        result = distill_train(run, cfg, env)
    except Preempted as stop:
        if env.rank == 0:
            click.echo(str(stop), err=True)
        sys.exit(EXIT_PREEMPTED)
    if env.rank == 0:
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
        click.echo(f"done: step {result.final_step}, loss {loss}, checkpoint {result.checkpoint}")
        for key, value in sorted(result.eval.items()):
            click.echo(f"{key}: {value:.4f}")
        if result.export_dir:
            click.echo(f"student (HF model): {result.export_dir}")


def _launch(request: Any, cfg: Any, params: dict[str, Any]) -> int:
    """Prepare on this host, then hand the resolved run to the deepspeed launcher."""
    from scaling.cli.train import _free_port
    from scaling.compress.distill import prepare

    run, _ = prepare(request, cfg)
    config_path = run.output / "run_config.json"
    command = [sys.executable, "-m", "deepspeed.launcher.runner"]
    if params["hostfile"]:
        command += ["--hostfile", params["hostfile"]]
    if params["num_nodes"]:
        command += ["--num_nodes", str(params["num_nodes"])]
    if params["num_gpus"]:
        command += ["--num_gpus", str(params["num_gpus"])]
    command += ["--master_port", str(params["master_port"] or _free_port())]
    command += [str(LAUNCHER_SCRIPT), "--resolved-config", str(config_path.resolve())]
    click.echo("+ " + shlex.join(command), err=True)
    return subprocess.call(command)
