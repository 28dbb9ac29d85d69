"""`scaling estimate`: per-GPU and per-node CPU memory of a run, for its DeepSpeed config and each ZeRO stage."""

from __future__ import annotations

import json
from typing import Any

import click

from scaling.config.cli_options import explicit_options, from_params, section_options, with_options
from scaling.config.deepspeed import RunValues, resolve_deepspeed
from scaling.config.run import run_values
from scaling.config.sections import (
    ASSUMED_GPUS_PER_NODE,
    DeepSpeedSource,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
)
from scaling.data.config import DataConfig
from scaling.models.lora_config import LoraConfig


@click.command()
@with_options(
    section_options(ModelConfig, only=("source",), required=("source",)),
    section_options(DeepSpeedSource, only=("config",)),
)
@click.option(
    "--nodes", type=click.IntRange(min=1), default=1, show_default=True, help="Nodes the run would span."
)
@with_options(
    section_options(ParallelConfig, only=("gpus_per_node",)),
    section_options(DataConfig, only=("seq_len",)),
    section_options(OptimConfig, only=("micro_batch", "grad_accum", "precision")),
    section_options(ModelConfig, only=("activation_checkpointing",)),
    section_options(ParallelConfig, only=("tensor_parallel", "pipeline_stages", "sequence_parallel")),
    section_options(ModelConfig, only=("vocab_size",)),
    section_options(LoraConfig, only=("r", "targets", "four_bit")),
    section_options(DeepSpeedSource, only=("overrides",)),
)
@click.option("--json", "as_json", is_flag=True, help="Print the same figures as JSON (bytes).")
@click.pass_context
def estimate(
    ctx: click.Context,
    model: str,
    ds_config: str | None,
    nodes: int,
    seq_len: int,
    activation_checkpointing: bool,
    vocab_size: int,
    overrides: tuple[str, ...],
    as_json: bool,
    **params: Any,
) -> None:
    """Estimate memory per GPU (params, grads, optimizer states, activations, buffers) and CPU per node, for
    the given config and, as a table, for every ZeRO stage and the offload variants. Formulas: ZeRO paper for
    model states, Korthikanti et al. for activations (see scaling/config/estimate.py). Options not given take
    `scaling train`'s defaults (and a node has 8 GPUs unless --gpus-per-node says otherwise)."""
    from scaling.config import estimate as est

    shape = est.model_shape(model, vocab_size=vocab_size, lora=from_params(LoraConfig, params))
    gpus_per_node = params["gpus_per_node"] or ASSUMED_GPUS_PER_NODE
    parallel = from_params(ParallelConfig, params, gpus_per_node=gpus_per_node)
    # Planned for GPUs whatever this machine has: the fused Adam DeepSpeed would use there.
    run = run_values(
        from_params(OptimConfig, params),
        parallel,
        world_size=nodes * gpus_per_node,
        explicit=explicit_options(ctx),
        total_steps=RunValues.total_steps,
        hidden_size=shape.hidden,
        num_heads=shape.heads,
        cpu_only=False,
    )
    resolved = resolve_deepspeed(ds_config, overrides, run)
    run = resolved.run  # with what the JSON decided where an option was not given
    micro_batch, precision = run.micro_batch, run.precision
    tensor_parallel, pipeline_stages, sequence_parallel = (
        run.tensor_parallel,
        run.pipeline_stages,
        run.sequence_parallel,
    )
    layout = est.Layout(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        tensor_parallel=tensor_parallel,
        pipeline_stages=pipeline_stages,
        sequence_parallel=sequence_parallel,
        seq_len=seq_len,
        micro_batch=micro_batch,
        activation_checkpointing=activation_checkpointing,
    )
    configured = est.estimate(shape, layout, resolved.config, precision)
    table = est.stage_table(shape, layout, resolved.config, precision)
    if as_json:
        payload: dict[str, Any] = {
            "model": {
                "source": model,
                "params": shape.params,
                "frozen": shape.frozen,
                "hidden": shape.hidden,
                "layers": shape.layers,
                "heads": shape.heads,
                "vocab": shape.vocab,
            },
            "layout": {
                "nodes": nodes,
                "gpus_per_node": gpus_per_node,
                "world_size": layout.world_size,
                "data_parallel": layout.data_parallel,
                "tensor_parallel": tensor_parallel,
                "pipeline_stages": pipeline_stages,
                "sequence_parallel": sequence_parallel,
                "seq_len": layout.seq_len,
                "micro_batch": micro_batch,
                "activation_checkpointing": activation_checkpointing,
                "precision": precision,
            },
            "ds_config": resolved.origin,
            "configured": configured.to_json(),
            "stages": [row.to_json() for row in table],
        }
        click.echo(json.dumps(payload, indent=2))
        return
    f = est.fmt_bytes
    click.echo(
        f"{model}: {shape.params:,} parameters (L={shape.layers}, h={shape.hidden}, a={shape.heads}, "
        f"V={shape.vocab}); {nodes} node(s) x {gpus_per_node} GPU(s), dp {layout.data_parallel}, "
        f"tp {tensor_parallel}, pp {pipeline_stages}, sp {sequence_parallel}; s={layout.seq_len} b={micro_batch} {precision}"
        f"{', activation checkpointing' if activation_checkpointing else ''}"
    )
    if shape.frozen:
        bits = shape.frozen_bits or (32 if precision == "fp32" else 16)
        click.echo(
            f"LoRA: {shape.params:,} trainable adapter parameters (optimizer states for these alone) over a "
            f"frozen base of {shape.frozen:,} in {bits} bits"
        )
    header = f"{'config':<28}{'params':>11}{'grads':>11}{'optimizer':>11}{'activations':>13}{'buffers':>11}"
    header += f"{'GPU total':>12}{'CPU/node':>12}{'NVMe/rank':>12}"
    click.echo(header)
    labelled = [(f"{resolved.origin.split()[-1]} (yours)", configured)] + [(_label(r), r) for r in table]
    for label, r in labelled:
        click.echo(
            f"{label:<28}{f(r.gpu_params):>11}{f(r.gpu_grads):>11}{f(r.gpu_optimizer):>11}"
            f"{f(r.gpu_activations):>13}{f(r.gpu_buffers):>11}{f(r.gpu_total):>12}{f(r.cpu_per_node):>12}"
            f"{f(r.nvme_per_rank):>12}"
        )
    click.echo(
        "buffers = communication buckets from the config + 10% fragmentation margin; CUDA context not included"
    )


def _label(row: Any) -> str:
    offload = []
    if row.offload_optimizer != "none":
        offload.append("opt")
    if row.offload_param != "none":
        offload.append("param")
    return f"ZeRO-{row.stage}" + (f" + {'/'.join(offload)} offload" if offload else "")
