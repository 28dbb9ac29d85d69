"""`scaling launch [LAUNCH OPTIONS] -- KIND [OPTIONS]` (KIND: train or distill): resolve and validate the job
once on this host, check the hosts (`scaling doctor`), prepare it (OUTPUT/run_config.json and the kind's other
resolved files) and start the DeepSpeed launcher so that every rank runs `python -m scaling.rank KIND
--resolved-config OUTPUT/run_config.json`.

Exit codes: 0 done; 2 bad input or a failed preflight check (nothing started); 75 preempted (SIGTERM: every
rank saved at the same step; the same command with `--resume auto` continues); anything else: the run failed,
and the message names the rank and the step.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from scaling.errors import ConfigError, Problem
from scaling.launch.command import LaunchSpec
from scaling.launch.job import KINDS, RUN_CONFIG, JobKind, job_kind

# Options of the job commands that say how to start ranks: `scaling launch` owns those.
_LAUNCH_ONLY = ("num_gpus", "num_nodes", "hostfile", "master_port", "resolved_config", "init_timeout")


def launch_options(func: Any) -> Any:
    """The launcher options shared by `scaling launch` and `scaling doctor` (LaunchSpec's fields)."""
    from scaling.config.cli_options import section_options, with_options

    return with_options(section_options(LaunchSpec))(func)


def spec_from_options(params: dict[str, Any]) -> LaunchSpec:
    from scaling.config.cli_options import from_params

    return from_params(LaunchSpec, params)


def parse_job_args(args: tuple[str, ...]) -> tuple[JobKind, click.Context]:
    """The `KIND ...` part after `--`: parsed by the job command's own options (same names, same checks)."""
    if not args or args[0] not in KINDS:
        kinds = "|".join(KINDS)
        raise click.UsageError(f"expected `-- {kinds} OPTIONS...` after the launch options")
    kind = job_kind(args[0])
    ctx = kind.click_command().make_context(f"scaling launch -- {kind.name}", list(args[1:]))
    given = [f"--{name.replace('_', '-')}" for name in _LAUNCH_ONLY if ctx.params.get(name) not in (None, -1)]
    if given:
        raise ConfigError(
            [Problem(flag, "is a launch option: give it before `--`, to `scaling launch`") for flag in given],
            header="misplaced options",
        )
    return kind, ctx


@click.command("launch", context_settings={"show_default": True})
@launch_options
@click.option(
    "--init-timeout", type=click.FloatRange(min=1), default=None, help="Start-up collective timeout (s)."
)
@click.option(
    "--dry-run", is_flag=True, help="Validate and print every node's command and environment; start nothing."
)
@click.option("--no-preflight", is_flag=True, help="Skip `scaling doctor` before starting.")
@click.option(
    "--preflight-timeout", type=click.FloatRange(min=1), default=15.0, help="Per-host probe timeout (s)."
)
@click.argument("job_args", nargs=-1, type=click.UNPROCESSED)
def launch(job_args: tuple[str, ...], **params: Any) -> None:
    """Validate a run once on this host, check the hosts, then start it on every node.

    \b
    scaling launch --hostfile hosts -- train --model tiny-gpt2 --data corpus.txt --output runs/x --max-steps 100
    scaling launch --hostfile hosts -- distill --teacher runs/x/final --student-layers 2 --data corpus.txt ...
    scaling launch --hostfile hosts --dry-run -- train ...          # print each node's command and environment
    scaling launch --hostfile hosts --no-ssh --node-rank $NODE -- train ...   # one call per node (srun)
    """
    from scaling.launch.command import build_plan, render_plan
    from scaling.launch.job import on_hosts, rank_args, with_init_timeout

    spec = spec_from_options(params)
    kind, ctx = parse_job_args(job_args)
    if not ctx.params.get("output"):
        raise ConfigError([Problem("--output", "is required")], header="missing options")
    output = Path(ctx.params["output"]).resolve()
    config_path = output / RUN_CONFIG
    plan = build_plan(spec, rank_args(kind, config_path), run_dir=output)
    request = on_hosts(kind.request(ctx, plan.world_size, plan.gpus_per_node), spec)
    if params["init_timeout"] is not None:
        request = with_init_timeout(request, params["init_timeout"])
    timeout = request.run.parallel.init_timeout_s
    plan = build_plan(spec, rank_args(kind, config_path, init_timeout_s=timeout), run_dir=output)

    run = kind.check(request)  # every problem found without writing, before anything is written or started
    if params["dry_run"]:
        click.echo(render_plan(plan, run_config=config_path), nl=False)
        return
    if not params["no_preflight"]:
        from scaling.launch.doctor import run_doctor

        report = run_doctor(spec, output=output, run=run, plan=plan, timeout=params["preflight_timeout"])
        click.echo(report.table(), err=True, nl=False)
        if not report.ok:
            raise ConfigError(
                [Problem(f"{c.name} [{c.host}]", c.detail) for c in report.checks if not c.ok],
                header="preflight failed (skip with --no-preflight)",
            )
    if spec.no_ssh and spec.node_rank:
        # Another node prepares the run; this one's ranks receive rank 0's config when they join the group.
        click.echo(f"node {spec.node_rank}: ranks will take the run config from rank 0", err=True)
    else:
        kind.prepare(request)
    from scaling.launch.supervise import run_plan

    sys.exit(run_plan(plan, output=output))
