"""The `scaling` group. Subcommands live in their own modules and are imported only when run,
so `scaling --help` never pays for torch, deepspeed or neural_compressor."""

from __future__ import annotations

import importlib
import importlib.util

import click

from scaling import __version__

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
    "bench": ("scaling.cli.bench", "bench", "Run the benchmark suite."),
    "demo": ("scaling.cli.demo", "demo", "Train, resume, export and compress a tiny GPT on bundled text."),
}


class LazyGroup(click.Group):
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
