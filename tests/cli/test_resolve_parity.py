"""`scaling config resolve` prints the DeepSpeed JSON that `scaling train` writes into run_config.json for the
same options: same option defaults, same notion of an explicit option, same machine probe, same resolution."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from scaling.cli.main import cli
from scaling.errors import ConfigError

CUSTOM = {
    "train_micro_batch_size_per_gpu": 4,  # not given as an option: both adopt it
    "gradient_accumulation_steps": "auto",
    "zero_optimization": {"stage": 1},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": 0.05}},
    "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": "auto", "total_num_steps": "auto"}},
}

EVERY_BOUND_OPTION = ["--micro-batch", "2", "--grad-accum", "3", "--lr", "1e-3", "--precision", "fp32",
                      "--betas", "0.8,0.9", "--lr-schedule", "cosine", "--min-lr-ratio", "0.1", "--warmup-steps",
                      "2", "--clip-grad", "0.5", "--weight-decay", "0.01"]  # fmt: skip
CASES = [
    ("defaults", "zero2", [], 1, None),
    (
        "every-bound-option",
        "zero3",
        EVERY_BOUND_OPTION,
        2,
        None,
    ),
    ("hpz-node-size", "zeropp", ["--micro-batch", "1"], 4, 2),
    ("json-values-adopted", "custom", ["--warmup-steps", "3"], 2, None),
]


def _spec(spec: str, tmp_path: Path) -> str:
    if spec != "custom":
        return spec
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(CUSTOM))
    return str(path)


def _config_resolve(spec: str, options: list[str], world: int, per_node: int | None) -> Any:
    args = ["config", "resolve", spec, *options, "--world-size", str(world)]
    args += ["--gpus-per-node", str(per_node)] if per_node else []
    return CliRunner().invoke(cli, args)


def _train_request(spec: str, options: list[str], world: int, per_node: int | None, out: Path, corpus, tok):
    from scaling.cli.train import train
    from scaling.cli.train_options import explicit_options, run_request_from_options

    args = [
        *options,
        "--ds-config",
        spec,
        "--data",
        str(corpus),
        "--tokenizer",
        str(tok),
        "--output",
        str(out),
    ]
    ctx = train.make_context("scaling train", [*args, "--model", "tiny-gpt2", "--max-steps", "10"])
    return run_request_from_options(
        ctx.params, world_size=world, explicit=explicit_options(ctx), gpus_per_node=per_node
    )


@pytest.mark.parametrize(
    ("spec", "options", "world", "per_node"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_config_resolve_prints_what_train_writes(
    tmp_path, small_corpus, clm_tokenizer, spec, options, world, per_node
) -> None:
    from scaling.engine.prepare import materialize

    spec = _spec(spec, tmp_path)
    shared = [*options, "--model", "tiny-gpt2", "--max-steps", "10"]
    shown = _config_resolve(spec, shared, world, per_node)
    assert shown.exit_code == 0, shown.output
    request = _train_request(spec, options, world, per_node, tmp_path / "run", small_corpus, clm_tokenizer)
    materialize(request)
    written = json.loads((tmp_path / "run" / "run_config.json").read_text())["deepspeed"]
    assert json.loads(shown.output) == written


@pytest.mark.parametrize(
    ("setting", "option"),
    [("train_micro_batch_size_per_gpu=4", ["--micro-batch", "2"]),
     # a degree given as an option is as explicit as any other (train used to adopt the JSON's silently)
     ("sequence_parallel_size=2", ["--sequence-parallel", "1"])],
)  # fmt: skip
def test_both_refuse_a_json_value_that_contradicts_a_given_option(
    tmp_path, small_corpus, clm_tokenizer, setting, option
) -> None:
    from scaling.engine.prepare import validate

    options = [*option, "--set", setting]
    shown = _config_resolve("zero1", [*options, "--max-steps", "10"], 2, None)
    assert shown.exit_code == 2 and f"contradicts {option[0]}" in shown.output, shown.output
    request = _train_request("zero1", options, 2, None, tmp_path / "run", small_corpus, clm_tokenizer)
    with pytest.raises(ConfigError, match=f"contradicts {option[0]}"):
        validate(request)
