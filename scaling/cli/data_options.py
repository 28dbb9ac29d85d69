"""Click options of the data pipeline, shared by `scaling train`, launchers/train.py and `scaling distill`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from scaling.data.config import DataConfig


def data_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--data",
            "data",
            multiple=True,
            metavar="SPEC",
            help="Training source: PATH|GLOB[:field][@weight]; repeat to mix sources.",
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
    )
