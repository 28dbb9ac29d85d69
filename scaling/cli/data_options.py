"""Click options of the data pipeline, shared by `scaling train`, launchers/train.py and `scaling distill`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from scaling.data.config import MIX_MODES, DataConfig


def data_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--data",
            "data",
            multiple=True,
            metavar="SPEC",
            help="Training source: [hf:]PATH|GLOB|DIR[:field|:line|:paragraph|:file][@weight]; repeat to mix "
            "sources. A directory written by `scaling preprocess` is read as packed tokens.",
        ),
        click.option("--eval-data", "eval_data", multiple=True, metavar="SPEC", help="Held-out source spec."),
        click.option("--seq-len", type=click.IntRange(min=8), default=128, show_default=True),
        click.option(
            "--label-column", default="label", show_default=True, help="Label field/column for seq-cls."
        ),
        click.option("--packing/--no-packing", default=True, show_default=True),
        click.option(
            "--cross-doc-attention/--no-cross-doc-attention",
            default=True,
            show_default=True,
            help="Let packed documents attend to each other.",
        ),
        click.option(
            "--mlm-probability",
            type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
            default=0.15,
            show_default=True,
        ),
        click.option(
            "--mix-temperature",
            type=click.FloatRange(min=0.0, min_open=True),
            default=1.0,
            show_default=True,
            help="p_i ∝ n_i^(1/T) over sources (n_i: @weight, else size).",
        ),
        click.option(
            "--mix",
            type=click.Choice(MIX_MODES),
            default="static",
            show_default=True,
            help="dynamic: reweight sources by eval loss.",
        ),
        click.option(
            "--mix-update-every",
            type=click.IntRange(min=1),
            default=100,
            show_default=True,
            help="Steps between dynamic updates.",
        ),
        click.option(
            "--mix-eval-batches",
            type=click.IntRange(min=1),
            default=2,
            show_default=True,
            help="Batches per source per update.",
        ),
        click.option(
            "--mix-max-ratio",
            type=click.FloatRange(min=1.0),
            default=4.0,
            show_default=True,
            help="Dynamic weights stay within p0/r..p0*r.",
        ),
        click.option(
            "--augment",
            default="",
            metavar="OPS",
            help="e.g. 'delete:0.1,swap:0.05,insert:0.05,synonym:0.1'; mlm also 'wwm:0.15' or 'span:0.15'.",
        ),
        click.option(
            "--synonyms",
            type=click.Path(dir_okay=False),
            default=None,
            help="Synonym table for synonym/insert.",
        ),
        click.option(
            "--max-doc-chars",
            type=click.IntRange(min=1000),
            default=1_000_000,
            show_default=True,
            help="Split longer documents.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def data_config_from_options(params: dict[str, Any]) -> DataConfig:
    return DataConfig(
        train=list(params["data"]),
        eval=list(params["eval_data"]),
        seq_len=params["seq_len"],
        label_column=params["label_column"],
        packing=params["packing"],
        cross_doc_attention=params["cross_doc_attention"],
        mlm_probability=params.get("mlm_probability", 0.15),
        mix_temperature=params.get("mix_temperature", 1.0),
        mix=params.get("mix", "static"),
        mix_update_every=params.get("mix_update_every", 100),
        mix_eval_batches=params.get("mix_eval_batches", 2),
        mix_max_ratio=params.get("mix_max_ratio", 4.0),
        augment=params.get("augment") or "",
        synonyms=params.get("synonyms"),
        max_doc_chars=params.get("max_doc_chars", 1_000_000),
    )
