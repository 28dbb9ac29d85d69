"""`scaling tokenizer`: train a tokenizer on data sources, move a pretrained model to another tokenizer, or\ngrow its tokenizer with a domain's most useful tokens."""

from __future__ import annotations

from typing import Any

import click

from scaling.config.cli_options import from_params, section_options, with_options
from scaling.config.sections import ModelConfig


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
@click.option(
    "--fold-whitespace",
    is_flag=True,
    help="SentencePiece's normalisation (NFKC, whitespace runs folded to one space) instead of exact text.",
)
@click.option(
    "--chat-template", metavar="chatml|FILE", default=None, help="Chat template saved with the tokenizer."
)
def train(
    data: tuple[str, ...],
    vocab_size: int,
    model_type: str,
    output: str,
    max_sentences: int,
    seed: int,
    fold_whitespace: bool,
    chat_template: str | None,
) -> None:
    """Train SentencePiece; the directory has pad/unk/<s>/</s>, <mask>, <cls>, <sep> (for clm, mlm, seq-cls).

    By default the text round-trips exactly (newlines, runs of spaces and tabs are kept; unseen characters
    fall back to bytes), and encoding a prompt adds <s> only."""
    from scaling.data.tokenizer import iter_training_text, train_sentencepiece

    tok = train_sentencepiece(
        iter_training_text(list(data), max_sentences=max_sentences),
        output,
        vocab_size=vocab_size,
        model_type=model_type,
        seed=seed,
        fold_whitespace=fold_whitespace,
        chat_template=chat_template,
    )
    click.echo(
        f"wrote {output}: {len(tok)} tokens ({model_type}); pad={tok.pad_token_id} eos={tok.eos_token_id} mask={tok.mask_token_id}"
    )


@tokenizer.command("transplant")
@click.argument("model", metavar="MODEL_DIR")
@click.option(
    "--output", type=click.Path(file_okay=False), required=True, help="HF model directory to write."
)
@with_options(section_options(ModelConfig, only=("tokenizer", "embedding_init"), required=("tokenizer",)))
def transplant(model: str, output: str, **params: Any) -> None:
    """Move a pretrained model to another tokenizer: write MODEL with its embeddings mapped to --tokenizer's
    vocabulary (same token: its row; other tokens: the mean of their old pieces' rows) as a plain HF model
    directory holding the new tokenizer."""
    from scaling.data.tokenizer import load_tokenizer
    from scaling.models.transplant import transplant_directory

    cfg = from_params(ModelConfig, params, source=model)
    assert cfg.tokenizer is not None  # a required option
    plan = transplant_directory(model, load_tokenizer(cfg.tokenizer), output, init=cfg.embedding_init)
    click.echo(f"wrote {output}: {plan.summary()}")


@tokenizer.command("extend")
@click.argument("model", metavar="MODEL_DIR")
@click.option(
    "--data", "data", multiple=True, required=True, metavar="SPEC", help="Domain source spec; repeatable."
)
@click.option("--add", type=click.IntRange(min=1), required=True, help="New tokens to add.")
@click.option(
    "--output", type=click.Path(file_okay=False), required=True, help="HF model directory to write."
)
@click.option("--max-sentences", type=click.IntRange(min=1), default=100_000, show_default=True)
def extend(model: str, data: tuple[str, ...], add: int, output: str, max_sentences: int) -> None:
    """Add the --add tokens that shorten the domain text most to MODEL's tokenizer, with their embedding rows
    composed from the pieces they replace; writes the model and the grown tokenizer to --output."""
    from scaling.data.tokenizer import iter_training_text, load_tokenizer
    from scaling.data.tokenizer_extend import extend_tokenizer, most_useful_tokens
    from scaling.models.transplant import transplant_directory

    tok = load_tokenizer(model)
    tokens = most_useful_tokens(tok, list(iter_training_text(list(data), max_sentences=max_sentences)), add)
    grown = extend_tokenizer(load_tokenizer(model), tokens)
    plan = transplant_directory(model, grown, output)
    shown = ", ".join(repr(t) for t in tokens[:10])
    click.echo(
        f"wrote {output}: {len(tokens)} tokens added ({shown}{', ...' if len(tokens) > 10 else ''}); {plan.summary()}"
    )
