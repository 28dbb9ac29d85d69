"""The commands that start a run's ranks, built once and shared by `scaling train --num-gpus/--hostfile`,
`scaling compress distill --num-gpus/--hostfile`, `scaling launch` and `scaling launch --dry-run`. Every rank
runs the module `scaling.rank` (see scaling/rank.py) with the job kind and its arguments.

Hosts and slots are selected with DeepSpeed's own functions (`parse_inclusion_exclusion`,
`apply_num_nodes_and_gpus`, `encode_world_info`), so the world we validate the config for is, byte for byte,
the world DeepSpeed's runner starts. Environment reaches the other nodes only through DeepSpeed's mechanisms:
the variables its runner exports by prefix, and a `.deepspeed_env` file (named by `DS_ENV_FILE`) that we write
into the run directory with what else every node must see (NCCL_*, GLOO_*, HF_*, OMP_NUM_THREADS, ...).
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from scaling.config.fields import option
from scaling.errors import ConfigError, Problem
from scaling.launch.hostfile import is_valid_hostname, parse_hostfile

RANK_MODULE = "scaling.rank"
"""What every rank runs (`python -m scaling.rank KIND ARGS`): a module of the package, so an installed wheel
launches without a checkout."""

LAUNCHERS = ("pdsh", "ssh", "openmpi", "mvapich", "slurm")
"""`ssh` is ours: one plain ssh per node running deepspeed.launcher.launch (no pdsh needed)."""
SCHEDULER_LAUNCHERS = ("openmpi", "mvapich", "slurm")
"""Launchers that start every rank themselves; ranks learn their place from the scheduler's variables."""

ENV_FILE = ".deepspeed_env"
DEFAULT_MASTER_PORT = 29500

FORWARD_PREFIXES = (
    "NCCL_",
    "GLOO_",
    "HF_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
    "TORCH_",
    "SCALING_",
    "DEEPSPEED_",
)
"""Variables every node must share (transport, caches, offline mode) that DeepSpeed's runner does not export."""
FORWARD_NAMES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_SECRET = re.compile(
    r"TOKEN(?!IZER)|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|AUTH|(?:^|_)KEYS?(?:_|$)", re.IGNORECASE
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MASK = "***"
"""What the dry run and the logs show in place of a forwarded value."""


def is_secret(name: str) -> bool:
    """Whether a variable's name says it holds a credential. Such variables are never forwarded to other nodes
    from any source (this host's environment, `.deepspeed_env` files, DeepSpeed's exported prefixes such as
    MLFLOW_): they would be written into the run directory, onto every node's command line (visible in `ps`)
    and into logs. docs/security.md says how to give remote ranks a secret deliberately."""
    return bool(_SECRET.search(name))


def forwardable(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without credentials, names a shell cannot export, and multi-line values."""
    return {k: v for k, v in environ.items() if not is_secret(k) and _ENV_NAME.match(k) and "\n" not in v}


@dataclass(frozen=True)
class LaunchSpec:
    """Where and how the ranks of a run are started: the launcher options of `scaling launch`, `scaling doctor`
    and (the first four) of the job commands, generated from these fields."""

    hostfile: Path | None = option(None, path="file", metavar="FILE")
    """DeepSpeed hostfile (`HOST slots=N` per line); without it, this machine only."""
    include: str = option("", metavar="FILTER")
    """DeepSpeed host/slot filter of what to use, e.g. 'node1@node2:0,1'."""
    exclude: str = option("", metavar="FILTER")
    """DeepSpeed host/slot filter of what not to use."""
    num_nodes: int | None = option(None, min=1)
    """Use only the first N hosts of the hostfile."""
    num_gpus: int | None = option(None, min=1)
    """Ranks per node (slots 0..N-1 of every host), started through the deepspeed launcher."""
    launcher: str = option("pdsh", choices=LAUNCHERS)
    """How to reach the nodes: pdsh, ssh, openmpi, mvapich or slurm."""
    no_ssh: bool = option(False, flag="--no-ssh")
    """Start only this node's ranks; every node runs the same command with its own --node-rank."""
    node_rank: int | None = option(None, min=0)
    """This node's index in the (filtered) hostfile, with --no-ssh."""
    master_addr: str | None = option(None, metavar="ADDR")
    """Address of rank 0; default: the first selected host."""
    master_port: int | None = option(None, min=1, max=65535)
    """Rendezvous port of rank 0; default: 29500 when a hostfile names the nodes, a free port on this machine
    alone."""
    ssh_port: int | None = option(None, min=1, max=65535)
    """ssh port of the workers, for the pdsh and ssh launchers."""

    @property
    def port(self) -> int:
        """The rendezvous port this launch uses (DEFAULT_MASTER_PORT where none was chosen)."""
        return self.master_port or DEFAULT_MASTER_PORT


@dataclass(frozen=True)
class NodeCommand:
    """What runs on one node."""

    host: str
    """Hostname as the hostfile gives it."""
    node_rank: int
    """Index of the node."""
    ranks: list[int]
    """Global ranks started on it."""
    command: str
    """The exact shell command DeepSpeed (or our ssh launcher) runs there."""
    shown: str = ""
    """The command as the dry run and the logs show it: forwarded values masked."""


@dataclass(frozen=True)
class LaunchPlan:
    """Everything `scaling launch` will start, computed without starting anything."""

    spec: LaunchSpec
    """The options it came from."""
    resources: dict[str, list[int]]
    """Selected host -> slots, in rank order."""
    master_addr: str
    """Where rank 0 listens."""
    local: list[list[str]]
    """Commands run on this host (the deepspeed runner, or one ssh per node)."""
    nodes: list[NodeCommand]
    """Per-node commands, for display and for the ssh launcher."""
    exports: dict[str, str]
    """Variables every node gets on top of its own environment."""
    env_file: Path | None
    """The `.deepspeed_env` file carrying `exports` (None for a single local node)."""
    notes: list[str] = field(default_factory=list)
    """Caveats the dry run prints."""

    @property
    def world_size(self) -> int:
        return sum(len(slots) for slots in self.resources.values())

    @property
    def gpus_per_node(self) -> int:
        return max(len(slots) for slots in self.resources.values())


def select_resources(spec: LaunchSpec) -> dict[str, list[int]]:
    """Hosts and slots of the run, computed the way deepspeed.launcher.runner computes them."""
    if spec.hostfile is None:
        if spec.include or spec.exclude or (spec.num_nodes or 1) > 1:
            raise ConfigError(
                [Problem("--hostfile", "is required with --include, --exclude or --num-nodes > 1")],
                header="invalid launch options",
            )
        return {"localhost": list(range(spec.num_gpus or 1))}
    if (spec.include or spec.exclude) and (spec.num_nodes or spec.num_gpus):
        raise ConfigError(
            [
                Problem(
                    "--include/--exclude", "cannot be combined with --num-nodes/--num-gpus (DeepSpeed rule)"
                )
            ],
            header="invalid launch options",
        )
    if spec.include and spec.exclude:
        raise ConfigError(
            [Problem("--include/--exclude", "are mutually exclusive")], header="invalid launch options"
        )
    from deepspeed.launcher import runner as ds_runner

    hosts = parse_hostfile(spec.hostfile)
    pool = collections.OrderedDict((h.name, h.slots) for h in hosts)
    try:
        active = ds_runner.parse_inclusion_exclusion(pool, spec.include, spec.exclude)
    except (ValueError, KeyError) as err:
        option = "--include" if spec.include else "--exclude"
        raise ConfigError(
            [Problem(option, str(err), spec.include or spec.exclude)], header="invalid launch options"
        ) from None
    active = ds_runner.apply_num_nodes_and_gpus(active, spec.num_nodes or -1, spec.num_gpus or -1)
    if spec.num_nodes and spec.num_nodes > len(pool):
        raise ConfigError(
            [Problem("--num-nodes", f"the hostfile lists only {len(pool)} host(s)", spec.num_nodes)],
            header="invalid launch options",
        )
    if not active:
        raise ConfigError(
            [Problem("--include/--exclude", "no host is left")], header="invalid launch options"
        )
    return {host: list(slots) for host, slots in active.items()}


def forwarded_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of this host that every node must see, beyond what DeepSpeed exports by itself."""
    wanted = {k: v for k, v in environ.items() if k.startswith(FORWARD_PREFIXES) or k in FORWARD_NAMES}
    return dict(sorted(forwardable(wanted).items()))


def user_env_files(environ: Mapping[str, str], cwd: Path) -> list[Path]:
    """The `.deepspeed_env` files DeepSpeed's runner would read without us (home, then the working dir)."""
    name = environ.get("DS_ENV_FILE", ENV_FILE)
    home = Path(environ.get("HOME", os.path.expanduser("~")))
    return [p for p in (home / name, cwd / name) if p.is_file()]


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def env_file_values(spec: LaunchSpec, master: str, environ: Mapping[str, str], cwd: Path) -> dict[str, str]:
    """The run's `.deepspeed_env`: this host's forwarded variables, then the user's own env files (which win,
    as they would without us), then the rendezvous address for launchers that start ranks directly."""
    values = forwarded_environment(environ)
    for path in user_env_files(environ, cwd):
        values.update(forwardable(read_env_file(path)))
    if spec.launcher in SCHEDULER_LAUNCHERS and not spec.no_ssh:
        # srun/mpirun start the ranks themselves; they need the rendezvous address like every other rank.
        values.update(MASTER_ADDR=master, MASTER_PORT=str(spec.port))
    return values


def deepspeed_exports(
    environ: Mapping[str, str], cwd: Path, file_values: Mapping[str, str]
) -> dict[str, str]:
    """What DeepSpeed's multi-node runners export to every rank: its prefixes, then the env file."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.launcher import runner as ds_runner

    env = dict(environ)
    env["PYTHONPATH"] = f"{cwd}:{env['PYTHONPATH']}" if "PYTHONPATH" in env else str(cwd)
    prefixes = list(ds_runner.EXPORT_ENVS) + list(get_accelerator().export_envs())
    out = forwardable({k: v for k, v in env.items() if any(k.startswith(p) for p in prefixes)})
    out.update(file_values)
    return dict(sorted(out.items()))


def launch_argv(
    resources: Mapping[str, list[int]],
    *,
    node_rank: int | str,
    master_addr: str,
    master_port: int,
    rank_args: list[str],
    python: str,
    log_level: bool,
) -> list[str]:
    """deepspeed.launcher.launch as DeepSpeed's runner starts it on one node."""
    from deepspeed.launcher.runner import encode_world_info

    argv = [
        python, "-u", "-m", "deepspeed.launcher.launch",
        f"--world_info={encode_world_info(collections.OrderedDict(resources))}",
    ]  # fmt: skip
    argv += [f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={master_port}"]
    if log_level:  # the runner's local path adds it; its pdsh path does not
        argv.append("--log_level=info")
    return [*argv, "--module", RANK_MODULE, *rank_args]


def build_plan(
    spec: LaunchSpec,
    rank_args: list[str],
    *,
    run_dir: Path,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    python: str | None = None,
) -> LaunchPlan:
    """The commands for `python -m scaling.rank RANK_ARGS` on every selected rank; starts and writes nothing.

    RANK_ARGS are the job kind and its arguments (`train --resolved-config OUTPUT/run_config.json`)."""
    environ = dict(os.environ if environ is None else environ)
    cwd = cwd or Path.cwd()
    python = python or sys.executable
    if spec.launcher not in LAUNCHERS:
        raise ConfigError([Problem("--launcher", f"expected one of {', '.join(LAUNCHERS)}", spec.launcher)])
    resources = select_resources(spec)
    hosts = list(resources)
    multi = spec.hostfile is not None
    master = spec.master_addr or ("127.0.0.1" if not multi else hosts[0])
    check_hostname(master, "--master-addr")
    notes: list[str] = []
    if spec.no_ssh and (spec.node_rank is None or not 0 <= spec.node_rank < len(hosts)):
        raise ConfigError(
            [Problem("--node-rank", f"--no-ssh needs --node-rank in 0..{len(hosts) - 1}", spec.node_rank)],
            header="invalid launch options",
        )
    # With --no-ssh every node starts its own launcher from its own environment: nothing to carry.
    env_file = run_dir / ENV_FILE if multi and not spec.no_ssh else None
    file_values = env_file_values(spec, master, environ, cwd)
    scheduler = spec.launcher in SCHEDULER_LAUNCHERS and not spec.no_ssh
    exports = deepspeed_exports(environ, cwd, file_values) if multi and not spec.no_ssh else {}

    runner = [python, "-m", "deepspeed.launcher.runner"]
    if spec.hostfile is not None:
        runner += ["--hostfile", str(spec.hostfile)]
    if spec.include:
        runner += ["--include", spec.include]
    if spec.exclude:
        runner += ["--exclude", spec.exclude]
    if spec.num_nodes:
        runner += ["--num_nodes", str(spec.num_nodes)]
    if spec.num_gpus:
        runner += ["--num_gpus", str(spec.num_gpus)]
    runner += ["--master_addr", master, "--master_port", str(spec.port)]
    if multi and not spec.no_ssh:
        runner += ["--launcher", spec.launcher]
        if spec.ssh_port is not None:
            runner += ["--ssh_port", str(spec.ssh_port)]
    if spec.no_ssh:
        runner += ["--no_ssh", "--node_rank", str(spec.node_rank)]
    if scheduler:
        # srun/mpirun run `python -u USER_SCRIPT ARGS` themselves, and DeepSpeed's slurm runner ignores --module:
        # "-m" as the script (after "--", so the runner does not read it as its own option) works for all three.
        runner += ["--", "-m", RANK_MODULE, *rank_args]
    else:
        runner += ["--module", RANK_MODULE, *rank_args]

    ranks = _rank_ranges(resources)
    nodes: list[NodeCommand] = []
    if multi and spec.launcher == "pdsh" and not spec.no_ssh:
        _check_pdsh_words(cwd, python, rank_args, exports)
    for index, host in enumerate(hosts):
        if spec.no_ssh and index != spec.node_rank:
            continue
        if scheduler:
            break
        local_launch = not multi or spec.no_ssh
        argv = launch_argv(
            resources, node_rank=index, master_addr=master, master_port=spec.port,
            rank_args=rank_args, python=python, log_level=local_launch,
        )  # fmt: skip
        if local_launch:
            command = shown = shlex.join(argv)
        else:
            command = remote_command(exports, cwd, argv)
            shown = remote_command(exports, cwd, argv, masked=True)
        nodes.append(NodeCommand(host=host, node_rank=index, ranks=ranks[host], command=command, shown=shown))
    local = [runner]
    if multi and spec.launcher == "ssh" and not spec.no_ssh:
        local = [ssh_argv(node.host, node.command, spec.ssh_port) for node in nodes]
    if scheduler:
        notes.append(
            f"{spec.launcher} starts every rank itself with `python -u -m {RANK_MODULE} ...`; "
            "ranks read their place from the scheduler's variables (SLURM_PROCID, OMPI_COMM_WORLD_RANK, ...)"
        )
    return LaunchPlan(
        spec=spec, resources=resources, master_addr=master, local=local, nodes=nodes,
        exports=exports, env_file=env_file, notes=notes,
    )  # fmt: skip


def remote_command(exports: Mapping[str, str], cwd: Path, argv: list[str], *, masked: bool = False) -> str:
    """One shell command line for a node: the exports, `cd` into the working directory, then `argv`, every
    piece quoted, so that `shlex.split` gives back exactly these words (with `;` between the commands).
    `masked`: the values shown as MASK, for the dry run and the logs."""
    names = [k for k in exports if _ENV_NAME.match(k)]
    parts = [f"export {k}={MASK}" if masked else shlex.join(["export", f"{k}={exports[k]}"]) for k in names]
    parts += [shlex.join(["cd", "--", str(cwd)]), shlex.join(argv)]
    return " ; ".join(parts)


def ssh_argv(host: str, command: str, port: int | None = None) -> list[str]:
    """ssh to `host` running `command`; `--` ends ssh's options, so no hostname is read as one."""
    check_hostname(host)
    return ["ssh", "-o", "BatchMode=yes", *(["-p", str(port)] if port else []), "--", host, command]


def check_hostname(host: str, where: str = "host") -> None:
    """Refuse what is neither an IP address nor a hostname of RFC 1123 labels: a name starting with '-'
    reaches ssh as an option (`-oProxyCommand=...`)."""
    if not is_valid_hostname(host):
        raise ConfigError(
            [Problem(where, "not a hostname (RFC 1123 labels: letters, digits, '-') or an IP address", host)],
            header="invalid launch options",
        )


# What DeepSpeed's pdsh runner puts into the remote shell command unquoted (the working directory, the
# interpreter, arguments without spaces) must be plain words; its exported values are double-quoted, where
# these still expand.
_PLAIN_WORD = re.compile(r"^[\w@%+=:,./-]*$")
_DOUBLE_QUOTE_SPECIAL = re.compile(r'[$`"\\!\n]')


def _check_pdsh_words(cwd: Path, python: str, rank_args: list[str], exports: Mapping[str, str]) -> None:
    """DeepSpeed's pdsh runner builds the remote command as a string without quoting (`cd {cwd}; ...`): refuse
    anything a shell would read as more than a word instead of letting it run on every node."""
    bad = [
        Problem(name, "contains characters DeepSpeed's pdsh command would pass to the remote shell", value)
        for name, value in [("working directory", str(cwd)), ("python", python)]
        + [("argument", arg) for arg in rank_args]
        if not _PLAIN_WORD.match(value)
    ]
    bad += [
        Problem(f"exported {k}", "contains characters that expand inside DeepSpeed's double quotes", MASK)
        for k, v in exports.items()
        if _DOUBLE_QUOTE_SPECIAL.search(v)
    ]
    if bad:
        raise ConfigError(
            bad,
            header="unsafe for --launcher pdsh (use --launcher ssh, which quotes every piece)",
        )


def write_env_file(
    plan: LaunchPlan, environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> None:
    """Write the run's `.deepspeed_env`: this host's forwarded variables, then the user's own env files."""
    if plan.env_file is None:
        return
    environ = os.environ if environ is None else environ
    values = env_file_values(plan.spec, plan.master_addr, environ, cwd or Path.cwd())
    plan.env_file.parent.mkdir(parents=True, exist_ok=True)
    # Owner-only: the run directory is often on a shared disk. Created with that mode (no window in which
    # another user could open it), and an older file's mode is corrected.
    fd = os.open(plan.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        # DeepSpeed splits each line at the first '=' and would fail on a blank line: write nothing else.
        handle.write("".join(f"{k}={v}\n" for k, v in values.items()))


def runner_environment(plan: LaunchPlan, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the deepspeed runner: ours, plus DS_ENV_FILE pointing at the run's env file."""
    env = dict(os.environ if environ is None else environ)
    if plan.env_file is not None:
        # DeepSpeed's multi-node runners export every variable of theirs with its prefixes (MLFLOW_, PYTHON...)
        # onto the remote command line: credentials among them must not be in the runner's environment.
        from deepspeed.launcher import runner as ds_runner

        prefixes = tuple(ds_runner.EXPORT_ENVS)
        env = {k: v for k, v in env.items() if not (k.startswith(prefixes) and is_secret(k))}
        # The runner reads $HOME/<name> and ./<name>; an absolute name makes both point at our file.
        env["DS_ENV_FILE"] = str(plan.env_file.resolve())
    return env


def render_plan(plan: LaunchPlan, *, run_config: Path) -> str:
    """The dry run's text: what runs here, what runs on each node, and the environment it gets."""
    lines = [
        f"# {len(plan.resources)} node(s), {plan.world_size} rank(s); master {plan.master_addr}:"
        f"{plan.spec.port}; launcher {'no-ssh' if plan.spec.no_ssh else plan.spec.launcher}",
        f"# every rank reads {run_config}",
        "# on this host:",
        *(shlex.join(argv) for argv in shown_local(plan)),
    ]
    for node in plan.nodes:
        first, last = node.ranks[0], node.ranks[-1]
        ranks = f"rank {first}" if first == last else f"ranks {first}-{last}"
        lines.append(f"# node {node.node_rank} ({node.host}), {ranks}:")
        lines.append(node.shown or node.command)
    if plan.exports:
        lines.append(
            f"# environment every node gets (via {plan.env_file} and DeepSpeed's exported prefixes):"
        )
        lines.extend(f"{k}={MASK}" for k in plan.exports)
    elif plan.spec.no_ssh or plan.env_file is None:
        lines.append("# environment: this node's own (each node runs its own launcher)")
    lines.extend(f"# note: {note}" for note in plan.notes)
    return "\n".join(lines) + "\n"


def shown_local(plan: LaunchPlan) -> list[list[str]]:
    """The commands run on this host as the dry run and the logs show them (forwarded values masked)."""
    shown = {node.command: node.shown for node in plan.nodes if node.shown}
    return [[shown.get(word, word) for word in argv] for argv in plan.local]


def _rank_ranges(resources: Mapping[str, list[int]]) -> dict[str, list[int]]:
    out, start = {}, 0
    for host, slots in resources.items():
        out[host] = list(range(start, start + len(slots)))
        start += len(slots)
    return out
