"""`scaling tokenizer`: train a SentencePiece tokenizer on data sources and write an HF tokenizer directory."""

from __future__ import annotations

import click


@click.group("tokenizer")
def tokenizer() -> None:
    """Train and inspect tokenizers."""


@tokenizer.command("train")
@click.option(
    "--data", "data", multiple=True, required=True, metavar="SPEC", help="Source spec; repeat for several."
)
@click.option("--vocab-size", type=click.IntRange(min=16), default=4096, show_default=True)
@click.option("--model-type", type=click.Choice(["unigram", "bpe"]), default="unigram", show_default=True)
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    required=True,
    help="Directory to write (AutoTokenizer-loadable).",
)
@click.option(
    "--max-sentences",
    type=click.IntRange(min=1),
    default=300_000,
    show_default=True,
    help="Records read at most.",
)
@click.option("--seed", type=int, default=0, show_default=True)
def train(
    data: tuple[str, ...], vocab_size: int, model_type: str, output: str, max_sentences: int, seed: int
) -> None:
    """Train SentencePiece; the directory has pad/unk/<s>/</s>, <mask>, <cls>, <sep> (for clm, mlm, seq-cls)."""
    from scaling.data.tokenizer import iter_training_text, train_sentencepiece

    tok = train_sentencepiece(
        iter_training_text(list(data), max_sentences=max_sentences),
        output,
        vocab_size=vocab_size,
        model_type=model_type,
        seed=seed,
    )
    click.echo(
        f"wrote {output}: {len(tok)} tokens ({model_type}); pad={tok.pad_token_id} eos={tok.eos_token_id} mask={tok.mask_token_id}"
    )
