"""Preflight checks of a multi-node run, before any rank starts: the hostfile, every host (resolves, answers,
same software and commit), the master port, the run directory as every node sees it, and memory and disk
against the estimate. One table; any failed row stops `scaling launch` (exit 2).

Remote hosts are probed by running one small Python program on each (`PROBE`) through a `Runner`: ssh for
the pdsh/ssh launchers, this process for the local node. Tests inject a runner to simulate hosts.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.errors import ConfigError
from scaling.launch.command import LaunchPlan, LaunchSpec, check_hostname, select_resources
from scaling.launch.hostfile import parse_hostfile

SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""The checkout the package runs from, whose git commit every host must share (an installed wheel has none:
the commit is then None on every host, and the package versions are compared instead)."""
DOCTOR_DIR = ".doctor"
VERSIONED = ("python", "torch", "deepspeed", "scaling", "transformers", "commit")

# Runs on every host with the same interpreter path the launcher will use; prints one JSON object.
PROBE = r"""
import importlib.metadata as md, json, os, shutil, socket, subprocess, sys
a = json.loads(sys.argv[1]); out = {"hostname": socket.gethostname(), "python": sys.version.split()[0]}
for name in ("torch", "deepspeed", "scaling", "transformers"):
    try: out[name] = md.version(name)
    except Exception: out[name] = None
try: out["commit"] = subprocess.run(["git", "-C", a["repo"], "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip() or None
except Exception: out["commit"] = None
out["mem_available"] = None
try:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"): out["mem_available"] = int(line.split()[1]) * 1024
except OSError: pass
d = a["output"]; base = d
while not os.path.isdir(base) and os.path.dirname(base) != base: base = os.path.dirname(base)
out["disk_free"] = shutil.disk_usage(base).free
try:
    probe_dir = os.path.join(d, ".doctor"); os.makedirs(probe_dir, exist_ok=True)
    mine = os.path.join(probe_dir, "write-test-%s-%d" % (out["hostname"], os.getpid()))
    open(mine, "w").write("ok"); os.remove(mine); out["writable"] = True
except OSError as e: out["writable"] = "%s: %s" % (type(e).__name__, e)
try: out["token_seen"] = open(a["token_path"]).read() == a["token"]
except OSError: out["token_seen"] = False
if a.get("port"):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try: s.bind(("", a["port"])); out["port_free"] = True
    except OSError as e: out["port_free"] = str(e)
    finally: s.close()
try:
    r = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    out["gpu_free"] = [int(x) * 2**20 for x in r.stdout.split()] if r.returncode == 0 else []
except (OSError, subprocess.SubprocessError, ValueError): out["gpu_free"] = []
print(json.dumps(out))
"""


@dataclass(frozen=True)
class ProbeResult:
    """What running a command on a host gave."""

    returncode: int
    """Exit code; 255 is ssh's own failure, 124 a timeout."""
    stdout: str
    """Standard output."""
    stderr: str
    """Standard error."""


Runner = Callable[[str, list[str], float], ProbeResult]
"""Runs argv on a host within a timeout (seconds)."""
Resolver = Callable[[str], list[str]]
"""Returns the addresses a hostname resolves to; raises OSError when it does not."""


def local_runner(host: str, argv: list[str], timeout: float) -> ProbeResult:
    """Run on this machine (the node of a --no-ssh launch)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ProbeResult(124, "", f"no answer within {timeout:.0f} s")
    return ProbeResult(done.returncode, done.stdout, done.stderr)


def ssh_runner(ssh_port: int | None = None) -> Runner:
    """Run through ssh the way pdsh and DeepSpeed's ssh check do: key-based, no prompts, bounded connect."""

    def run(host: str, argv: list[str], timeout: float) -> ProbeResult:
        ssh = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(timeout))}"]
        if ssh_port is not None:
            ssh += ["-p", str(ssh_port)]
        check_hostname(host)
        return local_runner(host, [*ssh, "--", host, shlex.join(argv)], timeout)

    return run


def default_resolver(host: str) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})


@dataclass(frozen=True)
class Check:
    """One row of the doctor's table."""

    name: str
    """What was checked: hostfile, resolve, reachable, versions, port, output, memory, disk."""
    host: str
    """The host it concerns ("-" for the run as a whole)."""
    ok: bool
    """Whether it passed."""
    detail: str
    """The figure or the reason, in words a user can act on."""


@dataclass
class Report:
    """All checks of one doctor run."""

    checks: list[Check] = field(default_factory=list)
    """Rows in the order they were made."""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, host: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, host, ok, detail))

    def table(self) -> str:
        rows = [("CHECK", "HOST", "RESULT", "DETAIL")]
        rows += [(c.name, c.host, "ok" if c.ok else "FAIL", c.detail) for c in self.checks]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
        failed = sum(not c.ok for c in self.checks)
        lines.append(f"{len(self.checks) - failed} passed, {failed} failed")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Needs:
    """What the run needs per node, from scaling/config/estimate.py (None when the run is not known)."""

    host_memory: int
    """Bytes of host memory per node (offloaded states, plus every rank's states on a node without GPUs)."""
    gpu_memory: int
    """Bytes per GPU."""
    disk: int
    """Bytes of checkpoints (keep_last + 1 in flight) and the final export."""
    ranks_per_node: int
    """Ranks a node runs."""


def estimate_needs(run: Any, plan: LaunchPlan) -> Needs:
    """Memory and disk of `run` (a resolved RunConfig) on the nodes of `plan`."""
    from scaling.config import estimate as est

    shape = est.model_shape(run.model.source, vocab_size=run.model.vocab_size)
    layout = est.Layout(
        nodes=len(plan.resources),
        gpus_per_node=plan.gpus_per_node,
        tensor_parallel=run.parallel.tensor_parallel,
        pipeline_stages=run.parallel.pipeline_stages,
        seq_len=run.data.seq_len,
        micro_batch=run.optim.micro_batch,
        activation_checkpointing=run.model.activation_checkpointing,
    )
    memory = est.estimate(shape, layout, run.deepspeed, run.optim.precision)
    per_checkpoint = shape.params * (est.PRECISION[run.optim.precision].param + 12)
    disk = per_checkpoint * (run.checkpoint.keep_last + 1) + 4 * shape.params
    return Needs(memory.cpu_per_node, memory.gpu_total, disk, plan.gpus_per_node)


def run_doctor(
    spec: LaunchSpec,
    *,
    output: Path,
    run: Any = None,
    plan: LaunchPlan | None = None,
    runner: Runner | None = None,
    resolver: Resolver | None = None,
    timeout: float = 15.0,
    python: str | None = None,
    local: Mapping[str, Any] | None = None,
) -> Report:
    """Check everything a launch with `spec` needs; `run` (a resolved RunConfig) adds memory and disk.

    `local` is this host's own probe (computed when not given); every node is compared with it."""
    report = Report()
    python = python or sys.executable
    resolver = resolver or default_resolver
    if runner is None:
        runner = local_runner if spec.no_ssh or spec.hostfile is None else ssh_runner(spec.ssh_port)

    if spec.hostfile is not None:
        try:
            hosts = parse_hostfile(spec.hostfile)
        except ConfigError as err:
            for problem in err.problems:
                report.add("hostfile", "-", False, problem.render())
            return report
        report.add("hostfile", "-", True, f"{len(hosts)} host(s), {sum(h.slots for h in hosts)} slot(s)")
    try:
        resources = plan.resources if plan is not None else select_resources(spec)
    except ConfigError as err:
        for problem in err.problems:
            report.add("hosts", "-", False, problem.render())
        return report
    names = list(resources)
    master = spec.master_addr or (names[0] if spec.hostfile is not None else "127.0.0.1")

    for host in names:
        try:
            addresses = resolver(host)
            report.add("resolve", host, True, ", ".join(addresses))
        except OSError as err:
            report.add(
                "resolve", host, False, f"does not resolve ({err}); fix DNS or /etc/hosts, or use an IP"
            )

    # One probe per host we can reach from here: all of them over ssh, only this node with --no-ssh.
    if spec.hostfile is None:
        probed = {names[0]: 0}
    elif spec.no_ssh:
        assert spec.node_rank is not None
        probed = {names[spec.node_rank]: spec.node_rank}
    else:
        probed = {host: index for index, host in enumerate(names)}
    output = output.resolve()
    token_dir = output / DOCTOR_DIR
    token = uuid.uuid4().hex
    token_path = token_dir / f"token-{token}"
    try:
        token_dir.mkdir(parents=True, exist_ok=True)
        token_path.write_text(token, encoding="utf-8")
    except OSError as err:
        report.add("output", "(this host)", False, f"cannot write {token_dir}: {err}")
    baseline = dict(local) if local is not None else _probe_here(output, python)
    results: dict[str, dict[str, Any]] = {}
    for host, index in probed.items():
        args: dict[str, Any] = {
            "repo": str(SOURCE_ROOT),
            "output": str(output),
            "token_path": str(token_path),
            "token": token,
        }
        if index == 0 and _is_master(host, master):
            args["port"] = spec.port
        started = time.monotonic()
        remote = spec.hostfile is not None and not spec.no_ssh
        result = runner(host, [python, "-c", PROBE, json.dumps(args)], timeout)
        took = time.monotonic() - started
        how = "ssh" if remote else "local"
        if result.returncode != 0:
            reason = _first_line(result.stderr) or f"exit code {result.returncode}"
            hint = " (passwordless ssh set up? host up?)" if result.returncode == 255 else ""
            report.add("reachable", host, False, f"{how}: {reason}{hint}")
            continue
        try:
            probe = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            report.add("reachable", host, False, f"{how}: unexpected answer {result.stdout[:120]!r}")
            continue
        report.add("reachable", host, True, f"{how}, answered in {took:.1f} s")
        results[host] = probe
    token_path.unlink(missing_ok=True)

    for host, probe in results.items():
        _check_host(report, host, probe, baseline, run=run, plan=plan)
    if spec.no_ssh:
        for host, probe in results.items():
            _compare_with_other_nodes(report, host, probe, token_dir)
    if master not in probed and not any(_is_master(h, master) for h in probed):
        report.add("port", master, True, f"{spec.port} not checked (master not probed from this node)")
    return report


def _probe_here(output: Path, python: str) -> dict[str, Any]:
    args = {"repo": str(SOURCE_ROOT), "output": str(output), "token_path": "", "token": ""}
    done = local_runner("localhost", [python, "-c", PROBE, json.dumps(args)], 60)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}


def _check_host(
    report: Report, host: str, probe: Mapping[str, Any], baseline: Mapping[str, Any], *, run: Any, plan: Any
) -> None:
    different = [
        f"{key} {probe.get(key)} (vs {baseline.get(key)} on this host)"
        for key in VERSIONED
        if probe.get(key) != baseline.get(key)
    ]
    if different:
        report.add("versions", host, False, "differs: " + "; ".join(different))
    else:
        commit = (probe.get("commit") or "no git")[:10]
        report.add(
            "versions", host, True,
            f"python {probe.get('python')}, torch {probe.get('torch')}, deepspeed {probe.get('deepspeed')}, "
            f"scaling {probe.get('scaling')}, commit {commit}",
        )  # fmt: skip
    if "port_free" in probe:
        port = probe["port_free"]
        report.add(
            "port",
            host,
            port is True,
            "free" if port is True else f"in use ({port}); pick another --master-port",
        )
    writable, shared = probe.get("writable"), probe.get("token_seen")
    if writable is not True:
        report.add("output", host, False, f"run directory not writable: {writable}")
    elif not shared:
        report.add(
            "output",
            host,
            False,
            "cannot see this host's files in the run directory: not a shared filesystem",
        )
    else:
        report.add("output", host, True, "writable and shared")
    from scaling.config.estimate import fmt_bytes

    if run is not None and plan is not None:
        needs = estimate_needs(run, plan)
        gpus = probe.get("gpu_free") or []
        host_need = needs.host_memory + (0 if gpus else needs.gpu_memory * needs.ranks_per_node)
        free = probe.get("mem_available")
        if free is None:
            report.add("memory", host, True, f"needs {fmt_bytes(host_need)}; free memory unknown")
        else:
            report.add(
                "memory",
                host,
                free >= host_need,
                f"{fmt_bytes(free)} free, run needs ~{fmt_bytes(host_need)}",
            )
        if gpus:
            short = min(gpus[: needs.ranks_per_node])
            report.add("gpu memory", host, short >= needs.gpu_memory,
                       f"{fmt_bytes(short)} free on the fullest GPU, ~{fmt_bytes(needs.gpu_memory)} per rank")  # fmt: skip
        disk = probe.get("disk_free", 0)
        report.add(
            "disk",
            host,
            disk >= needs.disk,
            f"{fmt_bytes(disk)} free, checkpoints need ~{fmt_bytes(needs.disk)}",
        )
    else:
        report.add(
            "disk", host, True, f"{fmt_bytes(probe.get('disk_free', 0))} free (no run given: not compared)"
        )


FRESH_S = 600.0
"""Probes other nodes left in the run directory count only this long (older ones may predate an upgrade)."""


def _compare_with_other_nodes(report: Report, host: str, probe: Mapping[str, Any], token_dir: Path) -> None:
    """With --no-ssh each node can probe only itself; comparing with the probes the other nodes leave in the
    shared run directory still catches a node with different software, whichever node starts last."""
    with suppress(OSError):
        (token_dir / f"node-{host}.json").write_text(json.dumps(probe), encoding="utf-8")
    for path in sorted(token_dir.glob("node-*.json")):
        other = path.name[len("node-") : -len(".json")]
        try:
            if other == host or time.time() - path.stat().st_mtime > FRESH_S:
                continue
            theirs = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        different = [
            f"{k} {probe.get(k)} here, {theirs.get(k)} there"
            for k in VERSIONED
            if probe.get(k) != theirs.get(k)
        ]
        if different:
            report.add("versions", host, False, f"differs from node {other}: " + "; ".join(different))


def _is_master(host: str, master: str) -> bool:
    local = ("localhost", "127.0.0.1")
    return host == master or (master in local and host in local)


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
