"""`scaling bench all|NAME [ARGS]`: the benchmark suite in bench/, a tool of the source checkout (not part of the
wheel). It runs `python -m bench ARGS` in the checkout, so the suite imports exactly as it does by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from scaling.errors import UserError


@click.command("bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Run benchmarks (all, or one by name) and regenerate BENCHMARKS.md; `scaling bench list` names them.

    Run it from the root of a source checkout (where bench/ is); it is the same as `python -m bench ARGS`."""
    root = Path.cwd()
    if not (root / "bench" / "__main__.py").is_file():
        raise UserError(
            f"no bench/ in {root}: the benchmark suite ships with the source checkout, not the installed package; "
            "run `scaling bench` (or `python -m bench`) from the checkout's root"
        )
    sys.exit(subprocess.call([sys.executable, "-m", "bench", *(args or ("list",))], cwd=root))
