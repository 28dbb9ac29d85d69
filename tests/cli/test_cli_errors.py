"""Every command: a user error is `Error: <message>` once, exit 2, no traceback (translated in one place,
scaling.cli.main); a bug is not translated: a non-2 exit with its traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import click
import pytest
from click.testing import CliRunner

from scaling.cli import main
from scaling.cli.main import SUBCOMMANDS, cli, run_command
from scaling.errors import ConfigError, DataError, Problem, UserError


def _failing(name: str, error: BaseException) -> click.Command:
    def callback() -> None:
        raise error

    return click.Command(name, callback=callback)


def _assert_user_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.count("Error:") == 1, result.output
    assert result.output.count(message) == 1, result.output
    assert "Usage:" not in result.output  # the command line parsed; repeating the usage would mislead


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_a_user_error_inside_any_command_exits_2_with_one_message(name, monkeypatch):
    error = ConfigError([Problem("--lr", "must be positive", -1.0)])
    monkeypatch.setattr(main.LazyGroup, "get_command", lambda self, ctx, cmd: _failing(cmd, error))
    result = CliRunner().invoke(cli, [name])
    _assert_user_error(result, "--lr = -1.0: must be positive")


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_a_bug_inside_any_command_is_not_a_user_error(name, monkeypatch):
    bug = RuntimeError("a bug")
    monkeypatch.setattr(main.LazyGroup, "get_command", lambda self, ctx, cmd: _failing(cmd, bug))
    result = CliRunner().invoke(cli, [name])
    assert result.exit_code == 1
    assert result.exception is bug  # propagated as raised, so Python prints its traceback


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "{tmp}", "--output", "{tmp}/hf"], "not a checkpoint"),
        (["checkpoint", "list", "{tmp}"], "no committed checkpoints"),
        (["checkpoint", "verify", "{tmp}"], "not a checkpoint"),
        (
            ["tokenizer", "train", "--data", "{tmp}/missing.txt", "--output", "{tmp}/tok"],
            "missing.txt does not exist",
        ),
    ],
    ids=["export", "checkpoint-list", "checkpoint-verify", "tokenizer-train"],
)
def test_real_user_errors_of_commands_exit_2(args, message, tmp_path):
    result = CliRunner().invoke(cli, [a.format(tmp=tmp_path) for a in args])
    _assert_user_error(result, message)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_a_bug_in_a_real_command_prints_its_traceback_and_exits_1(tmp_path):
    proc = _python(f"""
        import scaling.checkpoint.export as export
        def broken(*args, **kwargs):
            raise RuntimeError("a bug in export")
        export.export_checkpoint = broken
        from scaling.cli.main import cli
        cli(["export", {str(tmp_path)!r}, "--output", {str(tmp_path / "hf")!r}], prog_name="scaling")
    """)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert "RuntimeError: a bug in export" in proc.stderr


@pytest.mark.parametrize(
    ("error", "code", "shown"),
    [
        ("DataError('corpus.txt: empty')", 2, "Error: corpus.txt: empty"),
        ("KeyError('a bug')", 1, "Traceback (most recent call last)"),
    ],
    ids=["user-error", "bug"],
)
def test_run_command_gives_standalone_entries_the_same_translation(error, code, shown):
    proc = _python(f"""
        import click
        from scaling.cli.main import run_command
        from scaling.errors import DataError

        @click.command()
        def rank_entry():
            raise {error}

        run_command(rank_entry, prog_name="launchers/train.py")
    """)
    assert proc.returncode == code, proc.stderr
    assert shown in proc.stderr
    if code == 2:
        assert "Traceback" not in proc.stderr


def test_run_command_passes_click_exits_through():
    @click.command()
    @click.option("--n", type=int, required=True)
    def entry(n: int) -> None:
        if n < 0:
            raise DataError("negative")

    with pytest.raises(SystemExit) as ok:
        run_command(entry, prog_name="entry", args=["--n", "1"])
    assert ok.value.code == 0
    with pytest.raises(SystemExit) as bad:
        run_command(entry, prog_name="entry", args=["--n", "x"])
    assert bad.value.code == 2
    with pytest.raises(SystemExit) as user:
        run_command(entry, prog_name="entry", args=["--n", "-1"])
    assert user.value.code == 2
    assert issubclass(DataError, UserError)
