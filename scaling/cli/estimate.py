"""`scaling estimate`: per-GPU and per-node CPU memory of a run, for its DeepSpeed config and each ZeRO stage."""

from __future__ import annotations

import json
from typing import Any

import click

from scaling.cli.config import user_errors
from scaling.config.deepspeed import RunValues, resolve_deepspeed
from scaling.config.sections import PRECISIONS


@click.command()
@click.option(
    "--model", required=True, metavar="DIR|CONFIG|PRESET", help="HF model dir, config.json or preset."
)
@click.option("--ds-config", default="zero2", show_default=True, metavar="FILE|PRESET")
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--gpus-per-node", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--seq-len", type=click.IntRange(min=1), default=None, help="Default: the model's max positions."
)
@click.option("--micro-batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="bf16", show_default=True)
@click.option("--activation-checkpointing", is_flag=True, help="Full recomputation of each layer.")
@click.option("--tensor-parallel", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--pipeline-stages", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--sequence-parallel", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--vocab-size",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Vocabulary of a model preset (files and directories carry their own).",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key of the config.")
@click.option("--json", "as_json", is_flag=True, help="Print the same figures as JSON (bytes).")
@user_errors
def estimate(
    model: str,
    ds_config: str,
    nodes: int,
    gpus_per_node: int,
    seq_len: int | None,
    micro_batch: int,
    grad_accum: int,
    precision: str,
    activation_checkpointing: bool,
    tensor_parallel: int,
    pipeline_stages: int,
    sequence_parallel: int,
    vocab_size: int,
    overrides: tuple[str, ...],
    as_json: bool,
) -> None:
    """Estimate memory per GPU (params, grads, optimizer states, activations, buffers) and CPU per node, for
    the given config and, as a table, for every ZeRO stage and the offload variants. Formulas: ZeRO paper for
    model states, Korthikanti et al. for activations (see scaling/config/estimate.py)."""
    from scaling.config import estimate as est

    shape = est.model_shape(model, vocab_size=vocab_size)
    run = RunValues(
        micro_batch=micro_batch,
        grad_accum=grad_accum,
        precision=precision,
        world_size=nodes * gpus_per_node,
        tensor_parallel=tensor_parallel,
        pipeline_stages=pipeline_stages,
        sequence_parallel=sequence_parallel,
        gpus_per_node=gpus_per_node,
        hidden_size=shape.hidden,
        num_heads=shape.heads,
        cpu_only=False,
        explicit=frozenset(
            {
                "micro_batch",
                "grad_accum",
                "precision",
                "tensor_parallel",
                "pipeline_stages",
                "sequence_parallel",
            }
        ),
    )
    resolved = resolve_deepspeed(ds_config, overrides, run)
    layout = est.Layout(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        tensor_parallel=tensor_parallel,
        pipeline_stages=pipeline_stages,
        sequence_parallel=sequence_parallel,
        seq_len=seq_len or shape.max_positions or 2048,
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
