"""`scaling preprocess`: tokenize and pack sources once, so training reads token shards with no tokenizer work."""

from __future__ import annotations

import os

import click


@click.command("preprocess")
@click.option(
    "--data", "data", multiple=True, required=True, metavar="SPEC", help="Source spec; repeat for several."
)
@click.option(
    "--tokenizer",
    "tokenizer_dir",
    type=click.Path(file_okay=False),
    required=True,
    help="HF tokenizer directory.",
)
@click.option(
    "--seq-len", type=click.IntRange(min=8), required=True, help="Block length; training must use the same."
)
@click.option("--output", type=click.Path(file_okay=False), required=True, help="New (or empty) directory.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=min(4, os.cpu_count() or 1),
    show_default=True,
    help="Tokenizer processes.",
)
@click.option(
    "--shard-blocks",
    type=click.IntRange(min=1),
    default=65536,
    show_default=True,
    help="Blocks per shard file.",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def preprocess(
    data: tuple[str, ...],
    tokenizer_dir: str,
    seq_len: int,
    output: str,
    workers: int,
    shard_blocks: int,
    progress: bool,
) -> None:
    """Write packed token shards (memory-mapped), index.json and manifest.json to OUTPUT."""
    from scaling.data.shards import preprocess as run_preprocess

    result = run_preprocess(
        list(data),
        tokenizer_dir,
        output,
        seq_len=seq_len,
        workers=workers,
        shard_blocks=shard_blocks,
        show_progress=progress,
    )
    click.echo(
        f"wrote {result.output}: {result.blocks} blocks of {seq_len} tokens in {result.shards} shard(s), "
        f"{result.docs} documents, {result.tokens} tokens ({result.dropped_tail_tokens} tail tokens dropped)"
    )
