"""`scaling doctor`: each preflight failure gives a failed row with a message a user can act on, and exit 2.
Remote hosts are simulated by injecting a runner (the real probe program runs locally, then the answer is
altered the way a different or broken host would alter it)."""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner
from harness import free_port

from scaling.cli.main import cli
from scaling.launch.command import LaunchSpec
from scaling.launch.doctor import ProbeResult, local_runner, run_doctor


def fake_hosts(broken: dict[str, ProbeResult] | None = None, versions: dict[str, dict] | None = None):
    """A runner that runs the probe here for every host, except those marked broken or different."""
    calls = []

    def run(host, argv, timeout):
        calls.append(host)
        if broken and host in broken:
            return broken[host]
        result = local_runner(host, argv, timeout)
        if versions and host in versions:
            answer = json.loads(result.stdout)
            answer.update(versions[host])
            return ProbeResult(0, json.dumps(answer) + "\n", "")
        return result

    run.calls = calls
    return run


def resolver(host):
    if host.endswith(".invalid"):
        raise socket.gaierror(-2, "Name or service not known")
    return ["10.0.0.1"]


def failed(report):
    return [(c.name, c.host, c.detail) for c in report.checks if not c.ok]


@pytest.fixture
def hostfile(tmp_path):
    path = tmp_path / "hostfile"
    path.write_text("node-a slots=2\nnode-b slots=2\n")
    return path


def test_healthy_hosts_pass_every_check(hostfile, tmp_path):
    runner = fake_hosts()
    report = run_doctor(LaunchSpec(hostfile=hostfile, master_port=0), output=tmp_path / "run", runner=runner,
                        resolver=resolver)  # fmt: skip
    assert report.ok, report.table()
    assert runner.calls == ["node-a", "node-b"]
    names = {(c.name, c.host) for c in report.checks}
    assert {("versions", "node-b"), ("output", "node-a"), ("reachable", "node-b")} <= names
    assert "writable and shared" in report.table()


def test_bad_hostfile_line_is_named_with_its_number(tmp_path):
    path = tmp_path / "hostfile"
    path.write_text("node-a slots=2\nnode-b slot=2\n\nnode-a slots=1\n")
    report = run_doctor(
        LaunchSpec(hostfile=path), output=tmp_path / "run", runner=fake_hosts(), resolver=resolver
    )
    rows = failed(report)
    assert any(f"{path}:2" in detail and "expected 'HOSTNAME slots=N'" in detail for _, _, detail in rows)
    assert any(f"{path}:4" in detail and "first on line 1" in detail for _, _, detail in rows)


def test_unreachable_host(hostfile, tmp_path):
    down = ProbeResult(255, "", "ssh: connect to host node-b port 22: Connection refused\n")
    report = run_doctor(LaunchSpec(hostfile=hostfile), output=tmp_path / "run",
                        runner=fake_hosts(broken={"node-b": down}), resolver=resolver)  # fmt: skip
    assert failed(report) == [
        ("reachable", "node-b", "ssh: ssh: connect to host node-b port 22: Connection refused "
         "(passwordless ssh set up? host up?)")
    ]  # fmt: skip


def test_unresolvable_host(tmp_path):
    path = tmp_path / "hostfile"
    path.write_text("node-a slots=1\nghost.invalid slots=1\n")
    down = ProbeResult(255, "", "ssh: Could not resolve hostname ghost.invalid\n")
    report = run_doctor(LaunchSpec(hostfile=path), output=tmp_path / "run",
                        runner=fake_hosts(broken={"ghost.invalid": down}), resolver=resolver)  # fmt: skip
    rows = failed(report)
    assert ("resolve", "ghost.invalid") in [(n, h) for n, h, _ in rows]
    assert "does not resolve" in report.table()


def test_busy_master_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        report = run_doctor(LaunchSpec(num_gpus=2, master_port=port), output=tmp_path / "run")
    rows = failed(report)
    assert len(rows) == 1 and rows[0][0] == "port"
    assert "in use" in rows[0][2] and "pick another --master-port" in rows[0][2]


def test_version_mismatch(hostfile, tmp_path):
    runner = fake_hosts(versions={"node-b": {"torch": "2.1.0", "commit": "0" * 40}})
    report = run_doctor(
        LaunchSpec(hostfile=hostfile), output=tmp_path / "run", runner=runner, resolver=resolver
    )
    rows = failed(report)
    assert [(n, h) for n, h, _ in rows] == [("versions", "node-b")]
    assert "torch 2.1.0 (vs " in rows[0][2] and "commit 0000000000" in rows[0][2]


def test_run_directory_not_shared(hostfile, tmp_path):
    report = run_doctor(LaunchSpec(hostfile=hostfile), output=tmp_path / "run",
                        runner=fake_hosts(versions={"node-a": {"token_seen": False}}), resolver=resolver)  # fmt: skip
    assert failed(report) == [("output", "node-a", "cannot see this host's files in the run directory: "
                               "not a shared filesystem")]  # fmt: skip


def test_cli_exits_2_with_the_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hostfile").write_text("node-a slots=two\n")
    result = CliRunner().invoke(cli, ["doctor", "--hostfile", "hostfile"])
    assert result.exit_code == 2
    assert "CHECK" in result.output and "FAIL" in result.output and "preflight failed" in result.output
    assert "hostfile:1" in result.output and "Traceback" not in result.output


def test_cli_compares_memory_and_disk_with_the_estimate(tmp_path, small_corpus, clm_tokenizer):
    result = CliRunner().invoke(cli, [
        "doctor", "--num-gpus", "2", "--master-port", str(free_port()), "--", "train", "--model", "tiny-gpt2",
        "--data", str(small_corpus), "--tokenizer", str(clm_tokenizer), "--output", str(tmp_path / "run"),
        "--max-steps", "2",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "run needs ~" in result.output and "checkpoints need ~" in result.output
