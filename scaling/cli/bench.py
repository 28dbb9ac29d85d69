"""`scaling bench all|NAME [ARGS]`: the benchmark suite in bench/ (a source checkout's; not part of the wheel)."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Run benchmarks (all, or one by name) and regenerate BENCHMARKS.md; `scaling bench list` names them."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "bench" / "__main__.py").is_file():
        raise click.UsageError(f"no bench/ beside the scaling package ({root}): run from a source checkout")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench.__main__ import main

    sys.exit(main(list(args) or ["list"]))
