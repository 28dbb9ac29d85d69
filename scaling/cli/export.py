"""`scaling export CHECKPOINT --output DIR`: a checkpoint of any ZeRO stage -> a plain HF model directory."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--output", required=True, type=click.Path(file_okay=False), help="HF model directory to write."
)
@click.option("--safetensors/--bin", "safe", default=True, show_default=True, help="Weight file format.")
def export(checkpoint: str, output: str, safe: bool) -> None:
    """Export CHECKPOINT (a run dir, its checkpoints/ dir, or one step-N dir) to an HF model directory."""
    from scaling.checkpoint.export import export_checkpoint

    out = export_checkpoint(Path(checkpoint), Path(output), safe_serialization=safe)
    click.echo(f"wrote {out}")
