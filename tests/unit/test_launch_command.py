"""Launch commands: golden dry-run output per launcher, environment forwarding through .deepspeed_env, host
selection errors, scheduler variables, and how rank reports become one exit code."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from scaling.cli.main import cli
from scaling.launch.command import (
    LaunchSpec,
    build_plan,
    forwarded_environment,
    render_plan,
    runner_environment,
    select_resources,
    write_env_file,
)
from scaling.launch.status import (
    EXIT_PREEMPTED,
    FAILED,
    PREEMPTED,
    RankReport,
    conclude,
    read_reports,
    write_report,
)
from scaling.rank import place_from_scheduler

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "fixtures" / "launch"
ENV = {"HOME": "/nonexistent", "NCCL_DEBUG": "INFO", "GLOO_SOCKET_IFNAME": "eth0", "HF_HOME": "/shared/hf",
       "HF_TOKEN": "hf_secret", "PYTHONPATH": "/opt/lib", "OMP_NUM_THREADS": "4", "UNRELATED": "x",
       "MY_API_KEY": "k"}  # fmt: skip


@pytest.fixture
def hostfile(tmp_path):
    path = tmp_path / "hostfile"
    path.write_text("# two nodes, two slots each\nworker-0 slots=2\nworker-1 slots=2  # spare\n")
    return path


def normalized(text: str, tmp_path: Path) -> str:
    return (
        text.replace(sys.executable, "{python}").replace(str(tmp_path), "{tmp}").replace(str(REPO), "{repo}")
    )


def plan_text(spec, tmp_path, env=ENV) -> str:
    run = tmp_path / "run"
    plan = build_plan(spec, ["train", "--resolved-config", str(run / "run_config.json")], run_dir=run,
                      environ=env, cwd=REPO)  # fmt: skip
    return normalized(render_plan(plan, run_config=run / "run_config.json"), tmp_path)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("pdsh", {}),
        ("ssh", {"launcher": "ssh", "ssh_port": 2222}),
        ("no_ssh_node1", {"no_ssh": True, "node_rank": 1, "master_addr": "10.0.0.1"}),
        ("include", {"include": "worker-1:1"}),
        ("slurm", {"launcher": "slurm"}),
    ],
)
def test_dry_run_matches_golden(name, options, hostfile, tmp_path):
    text = plan_text(LaunchSpec(hostfile=hostfile, master_port=29600, **options), tmp_path)
    golden = GOLDEN / f"dryrun_{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_local_plan_has_one_node_and_no_env_file(tmp_path):
    plan = build_plan(LaunchSpec(num_gpus=2, master_port=29601), [], run_dir=tmp_path, environ=ENV, cwd=REPO)
    assert plan.world_size == 2 and list(plan.resources) == ["localhost"]
    assert plan.env_file is None and plan.exports == {}
    assert plan.local[0][:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]
    assert "--master_addr" in plan.local[0] and "127.0.0.1" in plan.local[0]


def test_env_file_carries_what_every_node_needs_but_no_secrets(hostfile, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".deepspeed_env").write_text("NCCL_IB_DISABLE=1\n")
    env = {**ENV, "HOME": str(home)}
    plan = build_plan(LaunchSpec(hostfile=hostfile), [], run_dir=tmp_path / "run", environ=env, cwd=REPO)
    write_env_file(plan, env, cwd=REPO)
    lines = (tmp_path / "run" / ".deepspeed_env").read_text().splitlines()
    # ours first, then the user's own file (later lines win in DeepSpeed's reader)
    assert lines == ["GLOO_SOCKET_IFNAME=eth0", "HF_HOME=/shared/hf", "NCCL_DEBUG=INFO", "OMP_NUM_THREADS=4",
                     "NCCL_IB_DISABLE=1"]  # fmt: skip
    # DeepSpeed's runner reads $HOME/$DS_ENV_FILE and ./$DS_ENV_FILE: an absolute name points both at ours
    assert runner_environment(plan, env)["DS_ENV_FILE"] == str(
        (tmp_path / "run" / ".deepspeed_env").resolve()
    )
    # ... and what the pdsh command exports is exactly DeepSpeed's prefixes plus that file
    assert plan.exports["PYTHONPATH"] == f"{REPO}:/opt/lib" and plan.exports["NCCL_IB_DISABLE"] == "1"
    assert (
        "HF_TOKEN" not in plan.exports
        and "MY_API_KEY" not in plan.exports
        and "UNRELATED" not in plan.exports
    )


def test_forwarded_environment_skips_multiline_values():
    assert forwarded_environment({"NCCL_X": "a\nb", "GLOO_Y": "1"}) == {"GLOO_Y": "1"}


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"include": "worker-9"}, "worker-9"),
        ({"include": "worker-0", "num_gpus": 1}, "cannot be combined"),
        ({"num_nodes": 3}, "lists only 2 host(s)"),
        ({"no_ssh": True}, "--node-rank"),
        ({"no_ssh": True, "node_rank": 2}, "--node-rank"),
    ],
)
def test_bad_selection_is_a_config_error(options, fragment, hostfile, tmp_path):
    from scaling.errors import ConfigError

    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        build_plan(LaunchSpec(hostfile=hostfile, **options), [], run_dir=tmp_path, environ=ENV)


def test_selection_matches_deepspeed(hostfile):
    assert select_resources(LaunchSpec(hostfile=hostfile, num_gpus=1)) == {"worker-0": [0], "worker-1": [0]}
    assert select_resources(LaunchSpec(hostfile=hostfile, exclude="worker-0")) == {"worker-1": [0, 1]}


def test_scheduler_variables_become_the_launch_contract():
    slurm = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_TASKS_PER_NODE": "4(x2)"}
    assert place_from_scheduler(slurm) == {
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "LOCAL_SIZE": "4",
    }
    mpi = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "RANK": "3"}  # fmt: skip
    assert place_from_scheduler(mpi) == {"LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_SIZE": "2"}


def test_reports_name_the_silent_rank_and_the_step(tmp_path):
    write_report(
        tmp_path, rank=0, step=7, kind=FAILED, error="RuntimeError: [gloo] Connection closed by peer"
    )
    outcome = conclude(247, read_reports(tmp_path), world_size=2)
    assert outcome.exit_code == 247
    assert "rank 1 stopped without a report" in outcome.message and "step 7" in outcome.message


def test_a_rank_that_raised_is_named_as_the_cause(tmp_path):
    write_report(tmp_path, rank=1, step=3, kind=FAILED, error="ValueError: bad batch")
    write_report(tmp_path, rank=0, step=3, kind=FAILED, error="RuntimeError: Connection closed by peer")
    message = conclude(1, read_reports(tmp_path), world_size=2).message
    assert (
        message.splitlines()[1].startswith("rank 1 on ")
        and "failed at step 3: ValueError: bad batch" in message
    )
    assert "stopped without a report" not in message


def test_preemption_is_75_whatever_the_launcher_said(tmp_path):
    for rank in (0, 1):
        write_report(tmp_path, rank=rank, step=4, kind=PREEMPTED, error="/runs/x/checkpoints/step-00000004")
    outcome = conclude(1, read_reports(tmp_path), world_size=2)  # launch.py exits 1 when it is signalled
    assert outcome.exit_code == EXIT_PREEMPTED == 75 and "after step 4" in outcome.message
    assert conclude(0, [], world_size=2).exit_code == 0
    assert RankReport(0, "h", 1, FAILED, "Timed out waiting 5000ms for recv").peer_failure


def test_a_node_accounts_only_for_its_own_silent_ranks(tmp_path):
    write_report(tmp_path, rank=2, step=5, kind=FAILED, error="RuntimeError: Connection closed by peer")
    message = conclude(1, read_reports(tmp_path), world_size=4, ranks=[2, 3]).message
    assert "rank 3 stopped without a report" in message and "rank 0" not in message


def test_a_user_error_before_training_is_not_called_a_crash():
    outcome = conclude(2, [], world_size=2)  # every rank printed the same UserError and wrote no report
    assert outcome.exit_code == 2 and "stopped without a report" not in outcome.message


def test_cli_dry_run_prints_and_starts_nothing(hostfile, tmp_path, small_corpus, clm_tokenizer):
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "launch", "--hostfile", str(hostfile), "--master-port", "29602", "--dry-run", "--",
        "train", "--model", "tiny-gpt2", "--data", str(small_corpus), "--tokenizer", str(clm_tokenizer),
        "--output", str(run), "--max-steps", "2",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "# node 1 (worker-1), ranks 2-3:" in result.output
    assert "--resolved-config " + str(run / "run_config.json") in result.output
    assert not run.exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--", "train", "--model", "tiny-gpt2", "--data", "x.txt", "--output", "o", "--num-gpus", "2"],
         "--num-gpus: is a launch option"),
        (["--", "--model", "tiny-gpt2"], "expected `-- train|distill"),
        (["--", "train", "--model", "nope-model", "--data", "x.txt", "--output", "o"], "--model"),
    ],
)  # fmt: skip
def test_cli_bad_input_exits_2_with_one_message(args, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["launch", "--num-gpus", "2", "--dry-run", *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output
