"""`scaling plot RUN`: draw RUN/plots/loss.png (train and eval loss, lr) from RUN/metrics.jsonl, e.g. while
the run is still going (every run also draws it when it ends)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("plot")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
def plot(run: Path) -> None:
    """Draw RUN/plots/loss.png from RUN/metrics.jsonl."""
    from scaling.engine.plot import plot_command_target

    click.echo(f"wrote {plot_command_target(run)}")
