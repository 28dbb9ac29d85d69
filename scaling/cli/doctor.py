"""`scaling doctor`: the preflight checks of a multi-node run, as one table (exit 2 when any fails)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from scaling.cli.launch import launch_options, parse_job_args, spec_from_options
from scaling.errors import ConfigError, Problem


@click.command("doctor", context_settings={"show_default": True})
@launch_options
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory to check (default: the train options' --output, else ./runs/doctor).",
)
@click.option("--timeout", type=click.FloatRange(min=1), default=15.0, help="Per-host probe timeout (s).")
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED)
def doctor(train_args: tuple[str, ...], output: Path | None, timeout: float, **params: Any) -> None:
    """Check the hosts of a run before launching it: hostfile syntax, name resolution, reachability (ssh for
    the pdsh/ssh launchers), the master port, python/torch/deepspeed/scaling versions and the git commit on
    every node, the run directory (writable and shared), and memory and disk against `scaling estimate`.

    \b
    scaling doctor --hostfile hosts
    scaling doctor --hostfile hosts -- train --model tiny-gpt2 --data corpus.txt --output runs/x
    """
    from scaling.launch.command import build_plan
    from scaling.launch.doctor import run_doctor

    spec = spec_from_options(params)
    run = plan = None
    if train_args:
        kind, ctx = parse_job_args(train_args)
        if ctx.params.get("output"):
            output = output or Path(ctx.params["output"])
        if output is not None:
            try:
                plan = build_plan(spec, [], run_dir=output.resolve())
            except ConfigError:
                plan = None  # the report names the problem
        if plan is not None:
            run = kind.check(kind.request(ctx, plan.world_size, plan.gpus_per_node))
    output = (output or Path("runs/doctor")).resolve()
    report = run_doctor(spec, output=output, run=run, plan=plan, timeout=timeout)
    click.echo(report.table(), nl=False)
    if not report.ok:
        failed = [Problem(f"{c.name} [{c.host}]", c.detail) for c in report.checks if not c.ok]
        raise ConfigError(failed, header="preflight failed")
