"""scaling.logs.setup_logging: rank prefix, only the main process's info on the console, a file per rank."""

from __future__ import annotations

import logging

from scaling.logs import log_file, setup_logging


def test_main_rank_shows_info_with_its_prefix_and_writes_its_file(tmp_path, capsys):
    setup_logging(rank=0, run_dir=tmp_path, world_size=2)
    logging.getLogger("scaling.data.pipeline").info("step 10 loss 2.5")
    err = capsys.readouterr().err
    assert err == "[rank 0] step 10 loss 2.5\n"
    assert log_file(tmp_path, 0) == tmp_path / "logs" / "rank-0.log"
    text = log_file(tmp_path, 0).read_text()
    assert "INFO scaling.data.pipeline: step 10 loss 2.5" in text


def test_other_ranks_show_only_warnings_but_log_everything_to_their_file(tmp_path, capsys):
    setup_logging(rank=1, run_dir=tmp_path, world_size=2)
    log = logging.getLogger("scaling.checkpoint.manager")
    log.info("saved step 4")
    log.warning("disk almost full")
    err = capsys.readouterr().err
    assert err == "[rank 1] disk almost full\n"
    text = (tmp_path / "logs" / "rank-1.log").read_text()
    assert "saved step 4" in text and "WARNING scaling.checkpoint.manager: disk almost full" in text
    assert not (tmp_path / "logs" / "rank-0.log").exists()


def test_single_process_has_no_prefix_and_a_second_setup_replaces_the_first(tmp_path, capsys):
    setup_logging(rank=0, run_dir=tmp_path / "a")
    setup_logging(rank=0, level=logging.WARNING)
    log = logging.getLogger("scaling.x")
    log.info("hidden")
    log.warning("shown once")
    assert capsys.readouterr().err == "shown once\n"
    assert (
        "shown once" not in (tmp_path / "a" / "logs" / "rank-0.log").read_text()
    )  # the old file handler is gone


def test_records_go_to_the_current_stderr(capsys):
    setup_logging(rank=0)
    capsys.readouterr()
    logging.getLogger("scaling").info("after a stderr swap")
    assert capsys.readouterr().err == "after a stderr swap\n"


SUPERVISOR = r"""
import sys
from pathlib import Path
from scaling.launch.command import LaunchPlan, LaunchSpec
from scaling.launch.supervise import run_plan
from scaling.logs import setup_logging
out = Path(sys.argv[1])
setup_logging(rank=0, run_dir=out)
plan = LaunchPlan(spec=LaunchSpec(), resources={"localhost": [0]}, master_addr="127.0.0.1",
                  local=[[sys.executable, "-c", "pass"]], nodes=[], exports={}, env_file=None)
sys.exit(run_plan(plan, output=out))
"""


def test_the_launching_process_logs_its_commands_to_console_and_file(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert f"+ {sys.executable} -c pass" in proc.stderr
    assert f"INFO scaling.launch.supervise: + {sys.executable} -c pass" in log_file(tmp_path, 0).read_text()


def test_every_scaling_command_logs_info_on_rank_0_only(monkeypatch):
    import click
    from click.testing import CliRunner

    from scaling.cli import main

    def say() -> None:
        logging.getLogger("scaling.checkpoint.store").info("checkpoint step 2 committed")

    monkeypatch.setattr(
        main.LazyGroup, "get_command", lambda self, ctx, name: click.Command(name, callback=say)
    )
    result = CliRunner().invoke(main.cli, ["export"], env={"RANK": "0", "WORLD_SIZE": "1"})
    assert result.exit_code == 0 and result.output == "checkpoint step 2 committed\n"
    other = CliRunner().invoke(main.cli, ["export"], env={"RANK": "1", "WORLD_SIZE": "2"})
    assert other.exit_code == 0 and other.output == ""
