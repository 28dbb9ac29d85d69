"""`scaling checkpoint`: list and verify training checkpoints."""

from __future__ import annotations

from pathlib import Path

import click

from scaling.errors import UserError


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
    try:
        latest = store.read_latest(root)
    except UserError as err:
        raise click.UsageError(str(err)) from None
    refs = store.committed(root)
    if not refs:
        raise click.UsageError(f"{root}: no committed checkpoints")
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

    try:
        ref = store.ref_from_path(Path(path))
        manifest = store.verify(ref.path, hashes=not sizes_only)
    except UserError as err:
        raise click.UsageError(str(err)) from None
    click.echo(f"{ref.path}: OK ({len(manifest['files'])} files, step {manifest['step']})")
