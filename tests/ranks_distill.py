"""Distillation helpers for the tests: tiny teachers, and functions the gloo harness runs on every rank."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY = {
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_head": 2, "n_positions": 128, "resid_pdrop": 0.0,
             "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "llama": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
              "num_key_value_heads": 1, "max_position_embeddings": 128},
    "bert": {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
             "max_position_embeddings": 128, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
}  # fmt: skip
LAYER_KEYS = {"gpt2": "n_layer", "llama": "num_hidden_layers", "bert": "num_hidden_layers"}


def make_model(
    kind: str,
    task: str,
    tokenizer_dir: Path,
    out: Path,
    *,
    layers: int = 4,
    seed: int = 0,
    init: float = 0.3,
    width: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
) -> Path:
    """A random tiny model saved as an HF directory with the tokenizer. A large init range gives peaked
    output distributions, so a teacher's soft labels carry information."""
    import torch
    from transformers import CONFIG_MAPPING, AutoTokenizer

    from scaling.models import model_class_for

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    spec = dict(TINY[kind])
    spec[LAYER_KEYS[kind]] = layers
    if width is not None:
        spec["n_embd" if kind == "gpt2" else "hidden_size"] = width
    if heads is not None:  # tensor and sequence parallelism split heads: a degree must divide them
        spec["n_head" if kind == "gpt2" else "num_attention_heads"] = heads
    if kv_heads is not None:
        spec["num_key_value_heads"] = kv_heads
    config = CONFIG_MAPPING[spec.pop("model_type")](**spec, vocab_size=len(tok), initializer_range=init)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(config, name, getattr(tok, name))
    if task == "seq-cls":
        config.num_labels = 2
    torch.manual_seed(seed)
    model = model_class_for(task).from_config(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def held_out_kl(
    teacher_dir: Path, student_dir: Path, task: str, texts: list[str], temperature: float = 1.0
) -> float:
    """KL(teacher || student) on `texts`, measured with plain transformers (no engine)."""
    import torch
    from transformers import AutoTokenizer

    from scaling.compress.distill_loss import aligned_logits, kd_loss
    from scaling.models import model_class_for

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    batch = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=32)
    cls = model_class_for(task)
    teacher = cls.from_pretrained(teacher_dir).eval()
    student = cls.from_pretrained(student_dir).eval()
    with torch.no_grad():
        t = teacher(**batch).logits
        s = student(**batch).logits
    s, t = aligned_logits(task, s, t)
    mask = None
    if task != "seq-cls":
        mask = batch["attention_mask"][:, 1:] if task == "clm" else batch["attention_mask"]
        mask = mask.bool()
    return float(kd_loss(s, t, mask, temperature))


def distill_cli(args: list[str]) -> dict[str, Any]:
    """Run `scaling compress distill ARGS` as one rank; rank 0 returns the metrics it logged."""
    import os

    import click

    from scaling.cli.distill import distill
    from scaling.errors import UserError

    code, message = 0, ""
    try:
        distill.main(args, prog_name="scaling compress distill", standalone_mode=False)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except click.ClickException as err:
        code, message = err.exit_code, err.format_message()
    except UserError as err:  # what the scaling group shows as `Error: ...`, exit 2
        code, message = 2, str(err)
    output = Path(args[args.index("--output") + 1])
    records = _records(output) if os.environ.get("RANK") == "0" else []
    return {"exit": code, "message": message, "records": records}


def _records(output: Path) -> list[dict[str, Any]]:
    path = output / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def teacher_partitioning(args: list[str]) -> dict[str, Any]:
    """What `distill_cli` does, through a Trainer with the distillation objective kept at hand: also reports how the teacher is held on
    this rank."""
    import torch

    from scaling.cli.distill import _distill_config, distill
    from scaling.cli.train_options import run_request_from_options
    from scaling.compress.distill import load_distill_config, prepare
    from scaling.compress.distill_objective import DistillObjective
    from scaling.config.run import RunConfig
    from scaling.distributed import LaunchEnv
    from scaling.engine import dist as dist_setup
    from scaling.engine.trainer import Trainer
    from scaling.launch.job import limit_threads

    ctx = distill.make_context("distill", list(args))
    params = ctx.params
    env = LaunchEnv.from_environ()
    request = run_request_from_options(
        {**params, "model": params["teacher"]}, world_size=env.world_size, explicit=frozenset(params)
    )
    limit_threads(env)  # as the CLI does: the same threads give bit-identical losses
    dist_setup.init_process_group(env, timeout_s=120)
    try:
        if env.rank == 0:
            prepare(request, _distill_config(params))
        dist_setup.barrier()
        output = Path(request.checkpoint.output)
        config = RunConfig.load(output / "run_config.json")
        objective = DistillObjective(config, load_distill_config(output))
        result = Trainer(config, env, objective=objective).fit()
        module = objective.teacher_module()
        # A partitioned parameter is an empty placeholder; this rank's share lives in ds_tensor.
        local = sum(
            p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in module.parameters()
        )
        full = sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())
        return {
            "engine": type(objective.teacher).__name__,
            "local_numel": local,
            "full_numel": full,
            "requires_grad": any(p.requires_grad for p in module.parameters()),
            "final_loss": result.final_loss,
            "eval": result.eval,
            "is_tensor": isinstance(objective.last_parts.total, torch.Tensor)
            if objective.last_parts
            else False,
            "records": _records(output) if env.rank == 0 else [],
        }
    finally:
        dist_setup.teardown()


def pipeline_cli(args: list[str]) -> dict[str, Any]:
    """`scaling compress pipeline ARGS` in a fresh process (its distill stage starts a process group)."""
    from click.testing import CliRunner

    from scaling.cli.main import cli

    result = CliRunner().invoke(cli, ["compress", "pipeline", *args])
    return {"exit": result.exit_code, "output": result.output}
