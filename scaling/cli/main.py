"""The `scaling` group. Subcommands live in their own modules and are imported only when run,
so `scaling --help` never pays for torch, deepspeed or neural_compressor.

It is also the one place where a user error (`scaling.errors.UserError`, raised anywhere below a command)
becomes `Error: <message>` and exit code 2; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import click

from scaling import __version__
from scaling.errors import UserError

# name -> (module, attribute, one-line help shown by `scaling --help` without importing the module)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "train": (
        "scaling.cli.train",
        "train",
        "Train an HF model with DeepSpeed (one process, or via the launcher).",
    ),
    "export": ("scaling.cli.export", "export", "Turn a training checkpoint into an HF model directory."),
    "config": ("scaling.cli.config", "config", "Validate, resolve, explain and edit DeepSpeed JSON configs."),
    "estimate": ("scaling.cli.estimate", "estimate", "Estimate per-GPU and per-node memory for a run."),
    "tokenizer": ("scaling.cli.tokenizer", "tokenizer", "Train and inspect tokenizers."),
    "preprocess": (
        "scaling.cli.preprocess",
        "preprocess",
        "Tokenize and pack sources into memory-mapped shards.",
    ),
    "checkpoint": ("scaling.cli.checkpoint", "checkpoint", "Inspect, verify and reshape checkpoints."),
    "compress": ("scaling.cli.compress", "compress", "Quantize, distill, prune, evaluate and report."),
    "launch": ("scaling.cli.launch", "launch", "Validate once, then start a multi-node run."),
    "doctor": ("scaling.cli.doctor", "doctor", "Preflight checks of the hosts of a multi-node run."),
    "plot": ("scaling.cli.plot", "plot", "Draw a run's loss plot (RUN/plots/loss.png) from its metrics."),
    "bench": ("scaling.cli.bench", "bench", "Run the benchmark suite."),
    "demo": ("scaling.cli.demo", "demo", "Train, resume, export and compress a tiny GPT on bundled text."),
}


class UserInputError(click.ClickException):
    """A UserError as the CLI shows it: `Error: <every problem>` and exit code 2 (click's usage-error code),
    without the usage banner (the command line parsed; what it named was wrong) and without a traceback."""

    exit_code = 2


@contextmanager
def user_errors_exit_2() -> Iterator[None]:
    """Turn a UserError raised inside the block into click's one-message exit 2; let anything else through."""
    try:
        yield
    except UserError as err:
        raise UserInputError(str(err)) from None


def run_command(command: click.Command, *, prog_name: str, args: Sequence[str] | None = None) -> None:
    """Run one command as a program of its own (a per-rank entry such as `launchers/train.py`), with the same
    error translation as under `scaling`. Exits like a click program: never returns normally."""
    try:
        command.main(list(args) if args is not None else None, prog_name=prog_name)
    except UserError as err:
        # Click's standalone main lets non-click exceptions out after closing its context.
        UserInputError(str(err)).show()
        sys.exit(UserInputError.exit_code)


class LazyGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        # The group's invoke runs the whole chain (nested groups included), so one wrapper covers every command.
        with user_errors_exit_2():
            return super().invoke(ctx)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, (module, _, _) in SUBCOMMANDS.items() if _module_exists(module))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = SUBCOMMANDS.get(cmd_name)
        if entry is None or not _module_exists(entry[0]):
            return None
        module, attr, _ = entry
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing uses the table's one-liners, so `scaling --help` imports no subcommand module.
        rows = [(name, SUBCOMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scaling")
def cli() -> None:
    """Train Hugging Face language models at scale with DeepSpeed, then compress them."""
    import os

    from scaling.logs import setup_logging

    # A command started by a launcher runs once per rank: only rank 0's informational lines reach the console.
    setup_logging(rank=int(os.environ.get("RANK", "0")), world_size=int(os.environ.get("WORLD_SIZE", "1")))
