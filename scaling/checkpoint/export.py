"""Export a training checkpoint (any ZeRO stage) to a plain HF model directory with safetensors.

Runs in one process on the files alone: no process group, no DeepSpeed engine.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from scaling.checkpoint.manager import MODEL_DIR, saved_run_config
from scaling.checkpoint.store import CheckpointRef, ref_from_path, verify
from scaling.compat.safe_load import load_weights_only, restricted_torch_load
from scaling.errors import CheckpointError
from scaling.files import apply_umask

TP_CONSOLIDATED = "tp_consolidated.pt"  # written by scaling.engine.tensor_parallel at save time


def consolidated_state_dict(ref: CheckpointRef) -> dict[str, Any]:
    """Full fp32 weights, gathered from whatever partitioning the checkpoint was saved with."""

    run = saved_run_config(ref)
    parallel = run.get("parallel", {})
    if (ref.ours / TP_CONSOLIDATED).is_file():
        # AutoTP shards live one per tensor rank; the run gathered them into this file at save time.
        return load_weights_only(ref.ours / TP_CONSOLIDATED)
    if int(parallel.get("pipeline_stages", 1)) > 1:
        return _pipeline_state_dict(ref)
    stage = int(run["deepspeed"].get("zero_optimization", {}).get("stage", 0))
    if stage > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with restricted_torch_load():  # zero_to_fp32 loads with weights_only=False
            return get_fp32_state_dict_from_zero_checkpoint(str(ref.root), tag=ref.tag)
    # Stage 0 keeps the whole module in one file; with bf16 the fp32 master copy lives in the optimizer
    # state, which is what training continues from, so prefer it when present.
    states = load_weights_only(ref.path / "mp_rank_00_model_states.pt")
    module = states["module"]
    master = _bf16_master_weights(ref, module)
    return {k: (master.get(k, v)).float() for k, v in module.items()}


def _pipeline_state_dict(ref: CheckpointRef) -> dict[str, Any]:
    """Merge a pipeline checkpoint's per-layer files (layer_XX-model_states.pt) back into HF names.

    The layer files hold the module weights: the trained weights for fp32 runs, their bf16 copies for bf16."""
    import re

    from transformers import AutoConfig

    from scaling.models.pipe import hf_prefixes, layer_state_to_hf

    config = AutoConfig.from_pretrained(ref.ours / MODEL_DIR, local_files_only=True)
    layers = {}
    for file in ref.path.glob("layer_*-model_states.pt"):
        match = re.match(r"layer_(\d+)", file.name)
        if match:
            layers[int(match.group(1))] = load_weights_only(file)
    layout = hf_prefixes(config)
    # The tied LM head on the last stage is a forward function over the embedding: DeepSpeed writes no file
    # for it, and its weight is the embedding's.
    needed = {i for i, p in enumerate(layout.prefixes) if p is not None and p not in layout.prefixes[:i]}
    if not needed <= set(layers):
        raise CheckpointError(
            f"{ref.path}: pipeline layer files {sorted(layers)} lack layers {sorted(needed - set(layers))} "
            "of the model"
        )
    return {k: v.float() for k, v in layer_state_to_hf(layout, layers).items()}


def _bf16_master_weights(ref: CheckpointRef, module: dict[str, Any]) -> dict[str, Any]:
    import torch

    files = sorted(ref.path.glob("bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"))
    if not files:
        return {}
    optim = load_weights_only(files[0])
    osd = optim.get("optimizer_state_dict", {})
    groups = osd.get("single_partition_of_fp32_groups")
    shapes = optim.get("param_shapes")
    if groups is None or shapes is None:
        return {}
    out = {}
    for flat, group_shapes in zip(groups, shapes, strict=False):
        offset = 0
        for name, shape in group_shapes.items():
            numel = int(torch.Size(shape).numel())
            out[name] = flat[offset : offset + numel].view(shape).clone()
            offset += numel
    return out


def export_checkpoint(
    checkpoint: Path,
    output_dir: Path,
    *,
    safe_serialization: bool = True,
    recorded_as: Path | None = None,
    adapter_dir: Path | None = None,
) -> Path:
    """Write `output_dir` as an HF model directory (config, safetensors, tokenizer) from a checkpoint.

    `checkpoint` may be a step directory, a checkpoints root or a run directory. The directory appears
    complete or not at all: it is assembled beside the target and renamed into place. `recorded_as`: the
    checkpoint to name in scaling_export.json when `checkpoint` is a temporary copy of it. A LoRA run's
    export is its base with the adapters merged in, and the PEFT adapter directory goes to `adapter_dir`
    (default: `output_dir` with `-adapter` appended to its name).
    """
    ref = ref_from_path(Path(checkpoint))
    verify(ref.path, hashes=True)
    run = saved_run_config(ref)
    model_dir = ref.ours / MODEL_DIR
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{ref.path}: no model config saved in {model_dir}")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    state = consolidated_state_dict(ref)
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    lora = run.get("lora") or {}
    adapter_staging = None
    if lora.get("r", 0) > 0:
        from scaling.models.lora import merged_model

        adapter_dir = Path(adapter_dir or output_dir.with_name(output_dir.name + "-adapter"))
        adapter_dir.parent.mkdir(parents=True, exist_ok=True)
        adapter_staging = Path(tempfile.mkdtemp(prefix=f".{adapter_dir.name}.", dir=adapter_dir.parent))
        try:
            model = merged_model(run, config, state, adapter_staging)
        except BaseException:
            shutil.rmtree(adapter_staging, ignore_errors=True)
            raise
    else:
        model = _plain_model(ref, run, config, state)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=safe_serialization)
        for file in model_dir.iterdir():
            # verify() refused links already; never follow one even so
            if file.name != "config.json" and file.is_file() and not file.is_symlink():
                shutil.copy2(file, staging / file.name, follow_symlinks=False)
        (staging / "scaling_export.json").write_text(
            json.dumps(
                {"checkpoint": str(recorded_as or ref.path), "step": ref.step, "task": run["model"]["task"]},
                indent=1,
            )
            + "\n",
            encoding="utf-8",
        )
        apply_umask(staging)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
        if adapter_staging is not None:
            assert adapter_dir is not None
            apply_umask(adapter_staging)
            if adapter_dir.exists():
                shutil.rmtree(adapter_dir)
            adapter_staging.rename(adapter_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if adapter_staging is not None:
            shutil.rmtree(adapter_staging, ignore_errors=True)
        raise
    return output_dir


def _plain_model(ref: CheckpointRef, run: dict[str, Any], config: Any, state: dict[str, Any]) -> Any:
    from scaling.models.load import model_class_for

    model = model_class_for(run["model"]["task"]).from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied and not _is_tied_copy(model, k)]
    if missing or unexpected:
        raise CheckpointError(
            f"{ref.path}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model


def _is_tied_copy(model: Any, key: str) -> bool:
    # transformers 5 describes ties as a mapping target -> source; a missing target whose tensor is shared
    # with a loaded one is fine.
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
    return key in tied
