"""Two "nodes" on one machine: two network namespaces joined by a veth pair, each with its own address, each
running `scaling launch --no-ssh --node-rank i` (one DeepSpeed launch.py per node, as under srun). ZeRO-2 must
train to the end with the loss curve of a single-node 2-rank run, bit for bit, with one shared run directory
and with one per node (node-local checkpoints). Without permission to create
namespaces the nodes are two loopback addresses (127.0.0.2, 127.0.0.3) instead."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures.launch.helpers import SCALING, kill_tree, launch_env, leftovers, losses, start, train_args
from harness import free_port, run_ranks
from ranks import train_cli

pytestmark = pytest.mark.slow

STEPS = 6


@dataclass(frozen=True)
class Node:
    """One simulated node."""

    address: str
    """Its address, as the hostfile names it."""
    prefix: list[str]
    """Command prefix that runs a process on it (`ip netns exec NS`, or nothing)."""
    interface: str
    """The interface gloo must use there (GLOO_SOCKET_IFNAME)."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def two_nodes() -> Iterator[list[Node]]:
    tag = f"{os.getpid() % 100000}"
    names = [f"scl{tag}a", f"scl{tag}b"]
    veths = [f"scv{tag}a", f"scv{tag}b"]
    subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    created: list[str] = []
    try:
        if os.environ.get("SCALING_TEST_LOOPBACK_NODES"):  # exercise the fallback where namespaces work
            raise OSError("SCALING_TEST_LOOPBACK_NODES is set")
        if shutil.which("ip") is None:
            raise OSError("`ip` (iproute2) is not installed")
        for name in names:
            _ip("netns", "add", name)
            created.append(name)
        _ip("link", "add", veths[0], "type", "veth", "peer", "name", veths[1])
        for index, (name, veth) in enumerate(zip(names, veths, strict=True)):
            _ip("link", "set", veth, "netns", name)
            _ip("-n", name, "addr", "add", f"{subnet}.{index + 1}/24", "dev", veth)
            _ip("-n", name, "link", "set", veth, "up")
            _ip("-n", name, "link", "set", "lo", "up")
    except (OSError, subprocess.CalledProcessError) as err:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        reason = getattr(err, "stderr", "") or str(err)
        print(f"network namespaces unavailable ({reason.strip()}); using loopback addresses")
        yield [Node("127.0.0.2", [], "lo"), Node("127.0.0.3", [], "lo")]
        return
    try:
        yield [
            Node(f"{subnet}.{i + 1}", ["ip", "netns", "exec", name], veth)
            for i, (name, veth) in enumerate(zip(names, veths, strict=True))
        ]
    finally:
        for name in names:  # deleting a namespace deletes its end of the veth pair, and so the pair
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _run_nodes(
    tmp_path: Path, nodes: list[Node], outs: list[Path], args: list[str], name: str
) -> tuple[list[int], list[str]]:
    """`scaling launch --no-ssh --node-rank i -- train ARGS --output outs[i]` on each node; codes and logs."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{node.address} slots=1\n" for node in nodes))
    port = str(free_port())
    procs = []
    try:
        for index, node in enumerate(nodes):
            argv = [
                *node.prefix, *SCALING, "launch", "--hostfile", str(hostfile), "--no-ssh",
                "--node-rank", str(index), "--master-addr", nodes[0].address, "--master-port", port,
                "--", "train", *args, "--output", str(outs[index]),
            ]  # fmt: skip
            env = launch_env(GLOO_SOCKET_IFNAME=node.interface)
            procs.append(start(argv, tmp_path / f"{name}-node{index}.log", env))
        codes = [proc.wait(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            kill_tree(proc)
    return codes, [(tmp_path / f"{name}-node{i}.log").read_text() for i in range(len(nodes))]


def test_two_nodes_train_zero2_like_one_node(tmp_path, small_corpus, clm_tokenizer, reference):
    out = tmp_path / "run"
    with two_nodes() as nodes:
        codes, logs = _run_nodes(tmp_path, nodes, [out, out], _args(small_corpus, clm_tokenizer), "shared")
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    # each node ran its own preflight; node 1 took rank 0's config instead of preparing its own
    assert all("CHECK" in log and "0 failed" in log for log in logs)
    assert "take the run config from rank 0" in logs[1]
    assert losses(out) == reference
    assert sorted(losses(out)) == list(range(1, STEPS + 1))
    assert leftovers(str(out)) == []


def test_two_nodes_each_with_its_own_run_directory(tmp_path, small_corpus, clm_tokenizer, reference):
    """Each node its own --output, as with node-local disks. Assumed shared, the run stops at start on both
    nodes with the way out; with node-local checkpoints it trains, halts, resumes bit-exactly from what each
    node kept, and exports on rank 0 from shards gathered over the process group."""
    outs = [tmp_path / "node0" / "run", tmp_path / "node1" / "run"]
    args = _args(small_corpus, clm_tokenizer)
    local = ["--set", "checkpoint.use_node_local_storage=true", "--save-every", "3"]
    with two_nodes() as nodes:
        codes, logs = _run_nodes(tmp_path, nodes, outs, args, "assumed-shared")
        assert codes == [2, 2], "\n\n".join(log[-3000:] for log in logs)
        for log in logs:
            assert "the run directory is not shared by all nodes" in log
            assert "--set checkpoint.use_node_local_storage=true" in log
            assert "Traceback" not in log

        codes, logs = _run_nodes(tmp_path, nodes, outs, [*args, *local, "--halt-at-step", "3"], "halt")
        assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
        for rank, out in enumerate(outs):
            step = out / "checkpoints" / "step-00000003"
            assert (out / "checkpoints" / "latest").read_text().strip() == step.name
            assert (step / "manifest.json").is_file() and (step / "mp_rank_00_model_states.pt").is_file()
            assert [p.name for p in (step / "scaling").glob("rank*.pt")] == [f"rank{rank:05d}.pt"]
            assert [p.name for p in step.glob("*optim_states.pt")] == [
                f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
            ]
        assert (outs[1] / "tokenizer" / "tokenizer.json").is_file()  # shipped from rank 0's run directory

        codes, logs = _run_nodes(
            tmp_path, nodes, outs, [*args, *local, "--resume", "auto", "--export"], "resume"
        )
        assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    assert losses(outs[0]) == reference
    assert (outs[0] / "final" / "model.safetensors").is_file()
    record = json.loads((outs[0] / "final" / "scaling_export.json").read_text())
    assert record["checkpoint"] == str(outs[0] / "checkpoints" / "step-00000006")  # not the gathered copy
    assert not (outs[0] / "checkpoints" / ".gathered").exists()
    for out in outs:
        assert leftovers(str(out)) == []


def _args(corpus: Path, tokenizer: Path) -> list[str]:
    args = train_args(Path("unused"), corpus, tokenizer, STEPS)
    at = args.index("--output")
    return args[:at] + args[at + 2 :]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_corpus, clm_tokenizer):
    """step -> loss_hex of a single-node 2-rank run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    rank0, _ = run_ranks(train_cli, 2, train_args(out, small_corpus, clm_tokenizer, STEPS))
    assert rank0["exit"] == 0
    return losses(out)
