"""Launch commands carry no credentials and cannot be injected into (docs/security.md): every piece reaching a
remote shell is quoted, hostnames are validated and come after `--`, and credentials from every source of
forwarded environment stay out of the dry run, the logs, the command lines and the files we write."""

from __future__ import annotations

import logging
import shlex
import stat
import subprocess
import sys

import pytest

from scaling.errors import ConfigError
from scaling.launch.command import (
    MASK,
    LaunchSpec,
    build_plan,
    is_secret,
    launch_argv,
    render_plan,
    runner_environment,
    shown_local,
    write_env_file,
)
from scaling.launch.hostfile import parse_hostfile

HOSTS = "worker-0 slots=1\n10.0.0.7 slots=1\n"
SECRETS = {
    "HF_TOKEN": "s3cr3t-hf",  # a forwarded prefix (HF_)
    "NCCL_PASSWORD_X": "s3cr3t-nccl",  # the word in the middle of the name
    "MLFLOW_TRACKING_PASSWORD": "s3cr3t-mlflow-pw",  # DeepSpeed's exported prefix MLFLOW
    "MLFLOW_TRACKING_TOKEN": "s3cr3t-mlflow-tok",
    "PYTHON_API_KEY": "s3cr3t-python",  # DeepSpeed's exported prefix PYTHON
    "TORCH_AUTH": "s3cr3t-torch",
}
ENV_FILE_SECRETS = {"NCCL_KEY": "s3cr3t-file-key", "MY_CREDENTIALS": "s3cr3t-file-cred"}


def test_the_filter_matches_words_anywhere_in_the_name():
    for name in [*SECRETS, *ENV_FILE_SECRETS, "AWS_SECRET_ACCESS_KEY", "KEY", "GH_PASSWD", "OAUTH_ID"]:
        assert is_secret(name), name
    for name in ("TOKENIZERS_PARALLELISM", "NCCL_DEBUG", "HF_HOME", "MONKEY_PATCH", "KEYBOARD", "PYTHONPATH"):
        assert not is_secret(name), name


def _plan(tmp_path, cwd, launcher="ssh", environ=None):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(HOSTS)
    spec = LaunchSpec(hostfile=hostfile, launcher=launcher, master_port=29600)
    run = tmp_path / "run"
    environ = environ or {"HOME": str(tmp_path / "nohome"), "NCCL_DEBUG": "INFO"}
    return build_plan(spec, ["train", "--resolved-config", str(run / "run_config.json")], run_dir=run,
                      environ=environ, cwd=cwd, python=sys.executable)  # fmt: skip


def test_a_hostile_working_directory_launches_over_ssh_word_for_word(tmp_path):
    cwd = tmp_path / "my run; touch INJECTED; $(touch INJECTED) `touch INJECTED`"
    cwd.mkdir()
    plan = _plan(tmp_path, cwd)
    text = render_plan(plan, run_config=tmp_path / "run" / "run_config.json")
    shown = [line for line in text.splitlines() if line.startswith("ssh ")]
    for node, (line, argv) in enumerate(zip(shown, plan.local, strict=True)):
        words = shlex.split(line)
        host = ["worker-0", "10.0.0.7"][node]
        assert words[:-1] == argv[:-1] == ["ssh", "-o", "BatchMode=yes", "--", host]
        intended = launch_argv(
            plan.resources, node_rank=node, master_addr="worker-0", master_port=29600,
            rank_args=["train", "--resolved-config", str(tmp_path / "run" / "run_config.json")],
            python=sys.executable, log_level=False,
        )  # fmt: skip
        remote = shlex.split(argv[-1])  # what the remote shell receives, as its words
        at = remote.index("cd")
        assert remote[at:] == ["cd", "--", str(cwd), ";", *intended]
        assert shlex.split(words[-1])[-len(intended) :] == intended
    # and a real shell runs it as those words: cd into the directory, nothing else
    command = plan.nodes[0].command.replace(shlex.join([sys.executable, "-u"]), "pwd; echo")
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == str(cwd) and not list(tmp_path.rglob("INJECTED"))


def test_pdsh_refuses_what_deepspeed_would_hand_the_shell(tmp_path):
    cwd = tmp_path / "a;$(id)"
    cwd.mkdir()
    with pytest.raises(ConfigError, match="--launcher ssh") as err:
        _plan(tmp_path, cwd, launcher="pdsh")
    assert "working directory" in str(err.value)
    _plan(tmp_path, tmp_path, launcher="pdsh")  # a plain directory is fine


@pytest.mark.parametrize("host", ["-E.pwnlog", "-oProxyCommand=id", "a..b", "host-", "x y", "a;b"])
def test_hostnames_that_are_not_names_are_refused(tmp_path, host):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"{host} slots=1\n")
    with pytest.raises(ConfigError):
        parse_hostfile(hostfile)


@pytest.mark.parametrize("host", ["node-1", "gpu_7.cluster.local", "10.1.2.3", "fe80::1", "localhost"])
def test_hostnames_and_addresses_are_accepted(tmp_path, host):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"{host} slots=1\n")
    assert parse_hostfile(hostfile)[0].name == host


@pytest.mark.parametrize("launcher", ["ssh", "pdsh"])
def test_credentials_from_every_source_never_leave_this_host(tmp_path, caplog, launcher):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".deepspeed_env").write_text("".join(f"{k}={v}\n" for k, v in ENV_FILE_SECRETS.items()))
    (tmp_path / ".deepspeed_env").write_text("NCCL_SOCKET_IFNAME=eth9\nGLOO_API_KEY=s3cr3t-cwd-file\n")
    environ = {"HOME": str(home), "NCCL_DEBUG": "INFO", "PYTHONPATH": "/opt/lib", **SECRETS}
    plan = _plan(tmp_path, tmp_path, launcher=launcher, environ=environ)
    dry_run = render_plan(plan, run_config=tmp_path / "run" / "run_config.json")
    write_env_file(plan, environ, cwd=tmp_path)
    env_file = plan.env_file
    assert env_file is not None and stat.S_IMODE(env_file.stat().st_mode) == 0o600
    written = env_file.read_text()
    assert "NCCL_SOCKET_IFNAME=eth9" in written and "NCCL_DEBUG=INFO" in written  # the rest still travels
    runner_env = runner_environment(plan, environ)
    with caplog.at_level(logging.INFO):
        for argv in shown_local(plan):  # what supervise logs
            logging.getLogger("scaling").info("+ %s", shlex.join(argv))
    remote_lines = "\n".join(shlex.join(argv) for argv in plan.local) + "\n".join(
        n.command for n in plan.nodes
    )
    forwarded = {k: v for k, v in runner_env.items() if k.startswith(("MLFLOW", "PYTHON"))}
    for value in [*SECRETS.values(), *ENV_FILE_SECRETS.values(), "s3cr3t-cwd-file"]:
        for where, text in [("dry run", dry_run), ("env file", written), ("logs", caplog.text),
                            ("commands", remote_lines), ("runner env", repr(forwarded))]:  # fmt: skip
            assert value not in text, (value, where)
    # values are masked in what is shown, but names are listed
    assert "INFO" not in dry_run and f"NCCL_DEBUG={MASK}" in dry_run and "/opt/lib" not in caplog.text
