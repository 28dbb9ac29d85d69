"""`scaling checkpoint`: list and verify training checkpoints."""

from __future__ import annotations

from pathlib import Path

import click

from scaling.errors import CheckpointError


@click.group("checkpoint")
def checkpoint() -> None:
    """Inspect and verify checkpoints."""


@checkpoint.command("list")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def list_checkpoints(run_dir: str) -> None:
    """List the committed checkpoints of a run and which one `latest` names."""
    from scaling.checkpoint import store

    root = Path(run_dir)
    root = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    latest = store.read_latest(root)
    refs = store.committed(root)
    if not refs:
        raise CheckpointError(f"{root}: no committed checkpoints")
    for ref in refs:
        marker = "  <- latest" if latest and ref.tag == latest.tag else ""
        size = sum(f.stat().st_size for f in ref.path.rglob("*") if f.is_file())
        click.echo(f"{ref.tag}  {size / 2**20:8.1f} MiB{marker}")


@checkpoint.command("verify")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--sizes-only", is_flag=True, help="Skip hashing (fast, catches truncation only).")
def verify(path: str, sizes_only: bool) -> None:
    """Check every file of a checkpoint against its manifest."""
    from scaling.checkpoint import store

    ref = store.ref_from_path(Path(path))
    manifest = store.verify(ref.path, hashes=not sizes_only)
    click.echo(f"{ref.path}: OK ({len(manifest['files'])} files, step {manifest['step']})")


@checkpoint.command("reshape")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Checkpoints root to write (resume from it with --resume OUTPUT).",
)
@click.option("--world-size", type=click.IntRange(min=1), required=True, help="Processes of the resumed run.")
@click.option(
    "--pipeline-stages",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Pipeline stages of the resumed run (the source's, or 1).",
)
@click.option(
    "--sequence-parallel",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Sequence-parallel degree of the resumed run.",
)
@click.option(
    "--micro-batch",
    type=click.IntRange(min=1),
    default=None,
    help="Micro-batch of the resumed run, for placing the data position [default: the source run's].",
)
def reshape(
    path: str,
    output: str,
    world_size: int,
    pipeline_stages: int,
    sequence_parallel: int,
    micro_batch: int | None,
) -> None:
    """Convert a checkpoint so that a run with another layout (data-parallel size, 1 pipeline stage) resumes it."""
    from scaling.checkpoint.reshape import Layout, reshape_checkpoint

    layout = Layout(
        world_size=world_size,
        pipeline_stages=pipeline_stages,
        sequence_parallel=sequence_parallel,
        micro_batch=micro_batch,
    )
    ref = reshape_checkpoint(Path(path), Path(output), layout)
    click.echo(f"{ref.path}: step {ref.step} for world size {world_size}; resume with --resume {ref.root}")
