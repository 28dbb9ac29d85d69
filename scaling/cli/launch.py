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
from scaling.launch.command import DEFAULT_MASTER_PORT, LAUNCHERS, LaunchSpec
from scaling.launch.job import KINDS, RUN_CONFIG, JobKind, job_kind

# Options of the job commands that say how to start ranks: `scaling launch` owns those.
_LAUNCH_ONLY = ("num_gpus", "num_nodes", "hostfile", "master_port", "resolved_config", "init_timeout")


def launch_options(func: Any) -> Any:
    """The launcher options shared by `scaling launch` and `scaling doctor`."""
    options = [
        click.option(
            "--hostfile",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="DeepSpeed hostfile (`HOST slots=N` per line). Without it: this machine only.",
        ),
        click.option("--include", default="", help="DeepSpeed host/slot filter, e.g. 'node1@node2:0,1'."),
        click.option("--exclude", default="", help="DeepSpeed host/slot filter of what not to use."),
        click.option("--num-nodes", type=click.IntRange(min=1), default=None, help="Use the first N hosts."),
        click.option("--num-gpus", type=click.IntRange(min=1), default=None, help="Ranks per node."),
        click.option(
            "--launcher",
            type=click.Choice(LAUNCHERS),
            default="pdsh",
            show_default=True,
            help="How to reach nodes.",
        ),
        click.option("--no-ssh", is_flag=True, help="Start only this node's ranks (run once per node)."),
        click.option(
            "--node-rank", type=click.IntRange(min=0), default=None, help="This node's index (--no-ssh)."
        ),
        click.option("--master-addr", default=None, help="Rank 0's address (default: first host)."),
        click.option(
            "--master-port",
            type=click.IntRange(1, 65535),
            default=DEFAULT_MASTER_PORT,
            show_default=True,
            help="Rendezvous port on the master.",
        ),
        click.option(
            "--ssh-port", type=click.IntRange(1, 65535), default=None, help="ssh port of the nodes."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def spec_from_options(params: dict[str, Any]) -> LaunchSpec:
    return LaunchSpec(
        hostfile=params["hostfile"],
        include=params["include"],
        exclude=params["exclude"],
        num_nodes=params["num_nodes"],
        num_gpus=params["num_gpus"],
        launcher=params["launcher"],
        no_ssh=params["no_ssh"],
        node_rank=params["node_rank"],
        master_addr=params["master_addr"],
        master_port=params["master_port"],
        ssh_port=params["ssh_port"],
    )


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
    from scaling.launch.job import rank_args, with_init_timeout

    spec = spec_from_options(params)
    kind, ctx = parse_job_args(job_args)
    if not ctx.params.get("output"):
        raise ConfigError([Problem("--output", "is required")], header="missing options")
    output = Path(ctx.params["output"]).resolve()
    config_path = output / RUN_CONFIG
    plan = build_plan(spec, rank_args(kind, config_path), run_dir=output)
    request = kind.request(ctx, plan.world_size, plan.gpus_per_node)
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
