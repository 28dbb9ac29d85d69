"""`scaling config`: validate, resolve, explain, edit, diff and list DeepSpeed JSON configs.

Validation is pure Python and fast; deepspeed is imported only for `validate`'s last check (DeepSpeed's own
`DeepSpeedConfig`), after everything else passed, and never when the config is already known to be broken.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from scaling.config.cli_options import explicit_options, from_params, section_options, with_options
from scaling.config.deepspeed import (
    PRESET_DIR,
    ResolvedDeepSpeed,
    RunValues,
    list_presets,
    load_json,
    locate,
    resolve_deepspeed,
)
from scaling.config.fields import option_fields
from scaling.config.run import DEEPSPEED_OPTIM_FIELDS, DEEPSPEED_PARALLEL_FIELDS
from scaling.config.run import run_values as values_for_run
from scaling.config.sections import DeepSpeedSource, ModelConfig, OptimConfig, ParallelConfig
from scaling.data.config import DataConfig
from scaling.errors import ConfigError, Problem

RESOLVE_OPTIM_FIELDS = tuple(
    f.name for f in option_fields(OptimConfig) if f.name in (*DEEPSPEED_OPTIM_FIELDS, "max_steps")
)
"""The optimisation options a DeepSpeed JSON is resolved against: the ones it binds, and the run length."""
_UNSET_RUN_LENGTH = RunValues.total_steps  # schedules need a length; without --max-steps, an assumed one


def run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The run options a DeepSpeed config is resolved against: `scaling train`'s own (same generated options,
    defaults and help), plus the world size a launcher would give."""
    world = click.Option(
        ["--world-size"], type=click.IntRange(min=1), default=1, show_default=True, help="Ranks in the job."
    )
    return with_options(
        [world],
        section_options(OptimConfig, only=RESOLVE_OPTIM_FIELDS),
        section_options(ParallelConfig, only=DEEPSPEED_PARALLEL_FIELDS),
        section_options(ModelConfig, only=("source",)),
        section_options(DeepSpeedSource, only=("overrides",)),
    )(func)


def run_values(ctx: click.Context, params: dict[str, Any], shape: Any = None) -> RunValues:
    """What `scaling train` would resolve the JSON against for the same options (scaling.config.run)."""
    optim = from_params(OptimConfig, params)
    return values_for_run(
        optim,
        from_params(ParallelConfig, params),
        world_size=params["world_size"],
        explicit=explicit_options(ctx),
        total_steps=optim.max_steps or _UNSET_RUN_LENGTH,
        hidden_size=shape.hidden if shape else None,
        num_heads=shape.heads if shape else None,
    )


def model_shape_or_none(model: str | None) -> Any:
    if model is None:
        return None
    from scaling.config.estimate import model_shape

    return model_shape(model)


def _resolve(ctx: click.Context, params: dict[str, Any], spec: str) -> tuple[ResolvedDeepSpeed, Any]:
    shape = model_shape_or_none(params["model"])
    resolved = resolve_deepspeed(spec, params["overrides"], run_values(ctx, params, shape))
    return resolved, shape


@click.group()
def config() -> None:
    """Validate, resolve, explain and edit DeepSpeed JSON configs (files or presets from ds_configs/)."""


@config.command()
@click.argument("spec", metavar="FILE|PRESET")
@run_options
@click.option(
    "--deepspeed/--no-deepspeed",
    "with_deepspeed",
    default=True,
    show_default=True,
    help="Finally run DeepSpeed's own DeepSpeedConfig validation (imports deepspeed, ~2 s).",
)
@click.pass_context
def validate(ctx: click.Context, spec: str, with_deepspeed: bool, **params: Any) -> None:
    """Check a config strictly before launch: JSON syntax, unknown keys, types, cross-field rules, batch
    arithmetic against the world size and parallel degrees. Every problem is reported; exit code 2."""
    resolved, _ = _resolve(ctx, params, spec)
    if with_deepspeed:
        deepspeed_check(resolved)
    for note in resolved.notes:
        click.echo(f"note: {note.render()}", err=True)
    click.echo(
        f"OK: {resolved.origin} is valid for world size {resolved.run.world_size} "
        f"(dp {resolved.run.data_parallel}, tp {resolved.run.tensor_parallel}, "
        f"pp {resolved.run.pipeline_stages}, sp {resolved.run.sequence_parallel}); global batch {resolved.config['train_batch_size']}"
    )


def deepspeed_check(resolved: ResolvedDeepSpeed) -> None:
    """DeepSpeed's own config validation for the data-parallel world size, without launching anything."""
    from scaling.compat.deepspeed import validate_config

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    # DeepSpeed checks the batch against the data-parallel size its mpu reports; with no mpu it asks the
    # world size, so report dp there (shared/notes/deepspeed-on-cpu.md §6).
    topology = resolved.run.topology
    # DeepSpeed divides the world by sequence_parallel_size itself when there is no mpu.
    dp = topology.zero_partition if "sequence_parallel_size" in resolved.config else topology.data_parallel
    try:
        validate_config(json.loads(json.dumps(resolved.config)), world_size=dp)
    except Exception as err:  # DeepSpeed raises AssertionError, pydantic ValidationError, ValueError, its own
        message = " ".join(str(err).split())
        raise ConfigError(
            [Problem("deepspeed", f"DeepSpeed rejects the resolved config: {message}")]
        ) from None


@config.command()
@click.argument("spec", metavar="FILE|PRESET")
@run_options
@click.pass_context
def resolve(ctx: click.Context, spec: str, **params: Any) -> None:
    """Print the final JSON every rank gets ("auto" filled, --set applied)."""
    resolved, _ = _resolve(ctx, params, spec)
    click.echo(json.dumps(resolved.config, indent=2))


@config.command()
@click.argument("spec", metavar="FILE|PRESET")
@run_options
@with_options(section_options(DataConfig, only=("seq_len",)))
@with_options(section_options(ModelConfig, only=("activation_checkpointing", "tokenizer", "embedding_init")))
@click.pass_context
def explain(
    ctx: click.Context,
    spec: str,
    seq_len: int,
    activation_checkpointing: bool,
    tokenizer: str | None,
    embedding_init: str,
    **params: Any,
) -> None:
    """Print every value with its source, then a plain-words summary and the memory estimate (with a
    --model; for --seq-len and --activation-checkpointing as `scaling train` takes them), and with a
    --tokenizer other than the model's own, how its embedding rows would be made."""
    from scaling.config.explain import render

    resolved, shape = _resolve(ctx, params, spec)
    memory = None
    if shape is not None:
        from scaling.config.estimate import Layout, estimate

        run = resolved.run
        per_node = run.gpus_per_node or run.world_size
        layout = Layout(
            nodes=max(1, run.world_size // per_node),
            gpus_per_node=per_node,
            tensor_parallel=run.tensor_parallel,
            pipeline_stages=run.pipeline_stages,
            sequence_parallel=run.sequence_parallel,
            seq_len=seq_len,
            micro_batch=run.micro_batch,
            activation_checkpointing=activation_checkpointing,
        )
        memory = estimate(shape, layout, resolved.config, run.precision)
    click.echo(render(resolved, memory))
    if tokenizer is not None and params["model"] is not None:
        click.echo(_embedding_move(params["model"], tokenizer, embedding_init))


def _embedding_move(model: str, tokenizer: str, init: str) -> str:
    from scaling.data.tokenizer import load_tokenizer
    from scaling.models.transplant import plan_for_model

    plan = plan_for_model(model, load_tokenizer(tokenizer), init=init)
    if plan is None:
        return (
            f"embeddings: kept (--tokenizer {tokenizer} is the model's own vocabulary, or it has none to map)"
        )
    return f"embeddings: moved to --tokenizer {tokenizer} ({init}): {plan.summary()}"


@config.command(name="set")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.option("--force", is_flag=True, help="Write even when the edited key is unknown or of the wrong type.")
def set_command(path: Path, assignments: tuple[str, ...], force: bool) -> None:
    """Edit a JSON file in place, keeping its key order, indentation, line endings and layout. The edited
    config is validated first: an unknown key or a wrong type is refused (exit 2, file untouched)."""
    from scaling.config.edit import set_keys

    if not path.is_file():
        raise ConfigError([Problem(str(path), "no such file")])
    changes = set_keys(path, list(assignments), force=force)
    for key, old, new in changes:
        click.echo(f"{key}: {json.dumps(old)} -> {json.dumps(new)}")


@config.command()
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@click.option(
    "--resolved", is_flag=True, help='Compare the configs after "auto" resolution for the given run options.'
)
@run_options
@click.pass_context
def diff(ctx: click.Context, a: str, b: str, resolved: bool, **params: Any) -> None:
    """Semantic difference of two configs (files or presets): key order, formatting and DeepSpeed's aliases
    (`stage3_max_live_parameters` = `max_live_parameters`) do not count. Exit code 1 when they differ, 0 when
    equal."""
    from scaling.config.edit import diff as semantic_diff
    from scaling.config.edit import fold_aliases

    if resolved:
        left, right = _resolve(ctx, params, a)[0].config, _resolve(ctx, params, b)[0].config
    else:
        left, right = load_json(locate(a)[0]), load_json(locate(b)[0])
    changes = semantic_diff(fold_aliases(left), fold_aliases(right))
    for change in changes:
        click.echo(change.render())
    if not changes:
        click.echo("no differences")
    sys.exit(1 if changes else 0)


@config.command(name="list")
def list_command() -> None:
    """List the presets in ds_configs/ with their one-line purpose."""
    blurbs = _preset_blurbs()
    for name in list_presets():
        click.echo(f"{name:<16} {blurbs.get(name, '')}")


@config.command()
@click.argument("name")
def show(name: str) -> None:
    """Print a preset's JSON as written."""
    path, _ = locate(name)
    click.echo(path.read_text(encoding="utf-8").rstrip())


def _preset_blurbs() -> dict[str, str]:
    """The first sentence under each `## name` heading of ds_configs/README.md."""
    readme = PRESET_DIR / "README.md"
    if not readme.is_file():
        return {}
    paragraphs: dict[str, list[str]] = {}
    current = None
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = line[3:].strip().strip("`").split()[0]
            paragraphs[current] = []
        elif current and line.strip():
            paragraphs[current].append(line.strip())
        elif current and paragraphs[current]:
            current = None  # only the first paragraph
    out = {}
    for name, lines in paragraphs.items():
        text = " ".join(lines)
        cut = min((i for i in (text.find(". "), text.find(": ")) if i > 0), default=len(text))
        out[name] = text[:cut].rstrip(".") + "."
    return out
