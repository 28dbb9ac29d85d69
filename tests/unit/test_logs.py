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


# What the deepspeed launcher chain printed during `make demo` (one SIGTERM-preempted run), verbatim.
LAUNCHER_OUTPUT = (
    "[2026-12-01 02:00:12,159] [WARNING] [runner.py:214:fetch_hostfile] Unable to find hostfile, will proceed "
    "with training with local resources only.\n"
    "[2026-12-01 02:00:12,159] [INFO] [runner.py:618:main] cmd = /venv/bin/python -u -m deepspeed.launcher.launch "
    "--world_info=eyJsb2NhbGhvc3QiOiBbMCwgMV19 --master_addr=127.0.0.1 --module scaling.rank train\n"
    "[2026-12-01 02:01:06,065] [INFO] [launch.py:174:main] Setting CUDA_VISIBLE_DEVICES=0,1\n"
    "Failed to load /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: Could "
    "not load this library\n"
    "[rank0]:W1201 02:00:26.877000 17745 torch/utils/_pytree.py:630] <enum 'KernelPreference'> is an Enum "
    "subclass and is now natively supported by torch.compile as an opaque value type. Calling register_constant() "
    "on Enum subclasses is deprecated and will be an error in a future release.\n"
    "\r  0%|          | 0/120 [00:00<?, ?step/s]/venv/lib/python3.11/site-packages/torch/distributed/"
    "c10d_logger.py:83: FutureWarning: `torch.distributed.all_gather_into_tensor` is deprecated. Please use "
    "`torch.distributed.all_gather_single` instead.\n"
    "  return func(*args, **kwargs)\n"
    "\r  1%|          | 1/120 [00:01<02:34,  1.29s/step]"
    "\r  2%|▏         | 2/120 [00:01<01:38,  1.20step/s]\n"
    "resumed from step 60\n"
    "eval @ step 120: loss 5.8070, perplexity 333.1\n"
    "Processing zero checkpoint '/tmp/demo/run/checkpoints/step-00000120'\n"
    "Reconstructed fp32 state dict with 28 params 263936 elements\n"
    "[2026-12-01 02:01:42,182] [ERROR] [launch.py:259:main] ['/venv/bin/python', '-u', '-m', 'scaling.rank'] "
    "exits with return code = 75\n"
    "[2026-12-01 02:01:42,182] [ERROR] [launch.py:259:main] ['/venv/bin/python'] exits with return code = 1\n"
    "Traceback (most recent call last):\n"
    '  File "x.py", line 1, in <module>\n'
    "prompt without a line end"
)


def test_launcher_output_keeps_our_lines_and_logs_the_third_party_noise():
    from scaling.logs import LineFilter

    console: list[str] = []
    noise: list[str] = []
    lines = LineFilter(console.append, noise.append)
    for start in range(0, len(LAUNCHER_OUTPUT), 37):  # arrives in arbitrary pieces
        lines.feed(LAUNCHER_OUTPUT[start : start + 37])
    lines.flush()
    shown = "".join(console)
    assert shown == (
        "\r"  # the carriage return before the bar frame the warning was printed behind
        "\r  1%|          | 1/120 [00:01<02:34,  1.29s/step]"
        "\r  2%|▏         | 2/120 [00:01<01:38,  1.20step/s]\n"
        "resumed from step 60\n"
        "eval @ step 120: loss 5.8070, perplexity 333.1\n"
        "[2026-12-01 02:01:42,182] [ERROR] [launch.py:259:main] ['/venv/bin/python'] exits with return code = 1\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "prompt without a line end"
    )  # a real failure and its traceback stay; a clean preemption (75) prints no [ERROR]
    logged = "".join(noise)
    assert len(noise) == 10 and logged.count("\n") == 10
    for needle in ("Unable to find hostfile", "cmd = ", "CUDA_VISIBLE_DEVICES", "_C_mxfp8", "register_constant",
                   "all_gather_into_tensor", "return func(*args", "Processing zero", "return code = 75"):  # fmt: skip
        assert needle in logged, needle


def test_in_process_noise_goes_to_the_rank_log_not_the_console(tmp_path):
    import subprocess
    import sys

    script = f"""
import logging, warnings
from pathlib import Path
from scaling.logs import setup_logging
setup_logging(0)                                   # the CLI's set-up: no run directory yet
logging.getLogger("torchao").warning("Failed to load /x/torchao/_C_mxfp8.so: Could not load this library")
warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated.", FutureWarning)
setup_logging(0, run_dir=Path({str(tmp_path)!r}))  # the rank's, once the run directory is known
logging.getLogger("neural_compressor").warning("hw aligned scales not supported for device CPU")
logging.getLogger("torchao").warning("a torchao warning we have not seen before")
warnings.warn("a warning of our own", UserWarning)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Failed to load" not in done.stderr and "all_gather_into_tensor" not in done.stderr
    assert "hw aligned" not in done.stderr
    assert (
        "a torchao warning we have not seen before" in done.stderr and "a warning of our own" in done.stderr
    )
    logged = (tmp_path / "logs" / "rank-0.log").read_text()
    assert "WARNING torchao: Failed to load /x/torchao/_C_mxfp8.so" in logged  # held, then written
    assert "py.warnings: FutureWarning: `torch.distributed.all_gather_into_tensor` is deprecated." in logged
    assert "WARNING neural_compressor: hw aligned scales" in logged


def test_a_rank_whose_console_reader_dies_keeps_running(tmp_path):
    # `scaling launch` reads the ranks' output through a pipe; kill -9 of it closes the pipe. The rank must
    # survive its next print (and reach the save the launcher watch asks for), not die of BrokenPipeError.
    import subprocess
    import sys
    import textwrap

    marker = tmp_path / "done"
    script = textwrap.dedent(
        f"""
        import sys, time
        from scaling.logs import survive_lost_console
        survive_lost_console()
        time.sleep(0.5)  # the reader closes meanwhile
        for i in range(2000):
            print("step", i, flush=True)
            sys.stderr.write("bar\\r"); sys.stderr.flush()
        open({str(marker)!r}, "w").write("saved")
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    child.stderr.close()
    assert child.wait(timeout=60) == 0
    assert marker.read_text() == "saved"
