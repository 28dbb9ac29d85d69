"""Pruning: unstructured magnitude (zeros, same shapes) and structured (removes heads and FFN channels, so
the saved config and checkpoint are smaller and load in plain transformers).

Structured pruning is uniform across layers because HF configs hold one head count and one FFN width.
Head removal needs an attention whose head size is stored in the config (`head_dim`: Llama, Mistral,
Qwen2...). BERT and GPT-2 derive head size as hidden_size / num_heads, so removing heads there would change
the head size on reload; for those only FFN channels can be removed, and we say so.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scaling.compress import verify
from scaling.compress.config import PruneConfig
from scaling.compress.data import read_documents
from scaling.compress.errors import CompressUserError, UnsupportedError
from scaling.compress.feed import Batch, calibration_batches, main_output
from scaling.compress.model_io import (
    FORMAT_HF,
    atomic_output,
    copy_tokenizer,
    load_hf,
    model_class,
    resolve_model_dir,
    write_manifest,
)

METHODS = ("magnitude", "structured")
SCOPES = ("global", "layer")


def validate(cfg: PruneConfig) -> None:
    if cfg.method not in METHODS:
        raise CompressUserError(f"unknown prune method {cfg.method!r} (choose from {', '.join(METHODS)})")
    if cfg.method == "magnitude":
        if not 0 < cfg.sparsity < 1:
            raise CompressUserError(f"--sparsity {cfg.sparsity}: must be in (0, 1)")
        if cfg.scope not in SCOPES:
            raise CompressUserError(f"--scope {cfg.scope!r}: choose global or layer")
    else:
        if not (0 <= cfg.heads < 1 and 0 <= cfg.ffn < 1) or cfg.heads == cfg.ffn == 0:
            raise CompressUserError("structured pruning needs --heads and/or --ffn, each a share in (0, 1)")
    if cfg.recover_steps < 0:
        raise CompressUserError("--recover-steps must be >= 0")
    if cfg.recover_steps and not cfg.recover_data:
        raise CompressUserError("--recover-steps needs --data SPEC to fine-tune on")


# ---------------------------------------------------------------- unstructured


def block_linears(model: Any) -> dict[str, Any]:
    """Linear and Conv1D layers inside the repeated blocks (embeddings, heads and poolers are left alone)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear | Conv1D) and re.search(r"\.\d+\.", n)
    }


def magnitude_prune(model: Any, sparsity: float, scope: str) -> dict[str, Any]:
    """Zero the smallest-magnitude weights; exact counts per layer (layer) or one threshold (global)."""
    import torch

    layers = block_linears(model)
    if not layers:
        raise UnsupportedError(f"{type(model).__name__}: no linear layers found inside repeated blocks")
    masks = {}
    with torch.no_grad():
        if scope == "global":
            flat = torch.cat([m.weight.detach().abs().flatten() for m in layers.values()])
            k = round(sparsity * flat.numel())
            # Exactly k weights: rank every weight once, so ties at the threshold cannot overshoot.
            order = torch.argsort(flat, stable=True)
            keep = torch.ones_like(flat, dtype=torch.bool)
            keep[order[:k]] = False
            offset = 0
            for name, m in layers.items():
                n = m.weight.numel()
                masks[name] = keep[offset : offset + n].view_as(m.weight)
                offset += n
        else:
            for name, m in layers.items():
                w = m.weight.detach().abs().flatten()
                keep = torch.ones_like(w, dtype=torch.bool)
                keep[torch.argsort(w, stable=True)[: round(sparsity * w.numel())]] = False
                masks[name] = keep.view_as(m.weight)
        for name, m in layers.items():
            m.weight.mul_(masks[name])
    return masks


def sparsity_of(model: Any) -> dict[str, float]:
    layers = block_linears(model)
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    total = sum(m.weight.numel() for m in layers.values())
    return {"linear_sparsity": zeros / total, "pruned_layers": len(layers)}


# ---------------------------------------------------------------- structured


@dataclass
class Block:
    """Where one transformer block keeps its attention and FFN projections (module names)."""

    q: str | None
    k: str | None
    v: str | None
    o: str | None
    ffn_in: list[str]
    """Layers producing FFN channels (Llama: gate_proj, up_proj; BERT: intermediate.dense)."""
    ffn_out: str
    """Layer consuming FFN channels."""


def find_blocks(model: Any) -> tuple[str, list[Block]]:
    """(family, blocks): llama-like (q/k/v/o_proj + gate/up/down_proj), bert or gpt2."""
    blocks, family = [], None
    for name, m in model.named_modules():
        if hasattr(m, "self_attn") and hasattr(m, "mlp") and hasattr(m.self_attn, "q_proj"):
            family = "llama"
            a, f = f"{name}.self_attn", f"{name}.mlp"
            ffn_in = [f"{f}.gate_proj", f"{f}.up_proj"] if hasattr(m.mlp, "gate_proj") else [f"{f}.up_proj"]
            blocks.append(
                Block(f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj", f"{a}.o_proj", ffn_in, f"{f}.down_proj")
            )
        elif hasattr(m, "attention") and hasattr(m, "intermediate") and hasattr(m.attention, "self"):
            family = "bert"
            blocks.append(
                Block(None, None, None, None, [f"{name}.intermediate.dense"], f"{name}.output.dense")
            )
        elif hasattr(m, "attn") and hasattr(m, "mlp") and hasattr(m.mlp, "c_fc"):
            family = "gpt2"
            blocks.append(Block(None, None, None, None, [f"{name}.mlp.c_fc"], f"{name}.mlp.c_proj"))
    if family is None:
        raise UnsupportedError(
            f"{type(model).__name__}: structured pruning supports Llama-like (Llama, Mistral, Qwen2), BERT and GPT-2 blocks"
        )
    return family, blocks


class _InputNorms:
    """Mean absolute input per channel of chosen layers, collected by forward hooks."""

    def __init__(self, model: Any, names: list[str]):
        self.sums: dict[str, Any] = {}
        self.handles = [model.get_submodule(n).register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Any:
        def hook(_mod: Any, inputs: tuple[Any, ...], _out: Any) -> None:
            x = inputs[0].detach().abs().flatten(0, -2).mean(0)
            self.sums[name] = self.sums.get(name, 0) + x

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _out_in_weight(module: Any) -> Any:
    """Weight as [out, in] for Linear and Conv1D alike."""
    from transformers.pytorch_utils import Conv1D

    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def _slice(module: Any, index: Any, dim: int) -> Any:
    """A new layer keeping `index` along dim 0 (outputs) or 1 (inputs) of the [out, in] view."""
    import torch
    from transformers.pytorch_utils import Conv1D, prune_linear_layer

    if isinstance(module, Conv1D):
        w = module.weight.detach().index_select(1 - dim, index).clone()
        new = Conv1D(w.shape[1], w.shape[0])
        new.weight.data = w
        new.bias.data = (
            module.bias.detach().index_select(0, index).clone() if dim == 0 else module.bias.detach().clone()
        )
        return new
    assert isinstance(module, torch.nn.Linear)
    return prune_linear_layer(module, index, dim=dim)


def _set(model: Any, name: str, module: Any) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def structured_prune(model: Any, cfg: PruneConfig, batches: list[Batch] | None) -> dict[str, Any]:
    """Remove the least important heads (KV groups) and FFN channels uniformly; returns what was removed."""
    import torch

    family, blocks = find_blocks(model)
    config = model.config
    if cfg.heads and family != "llama":
        raise UnsupportedError(
            f"{family}: attention heads cannot be removed so that plain transformers reloads the model "
            "(its head size is hidden_size / num_attention_heads, not a config field); prune --ffn only"
        )
    watch = [b.ffn_out for b in blocks] + ([b.o for b in blocks if b.o] if cfg.heads else [])
    norms = None
    if batches:
        norms = _InputNorms(model, watch)
        with torch.no_grad():
            for b in batches:
                main_output(model, b.input_ids, b.attention_mask)
        norms.close()
    report: dict[str, Any] = {"family": family}
    with torch.no_grad():
        if cfg.ffn:
            width = _out_in_weight(model.get_submodule(blocks[0].ffn_out)).shape[1]
            keep_n = width - round(cfg.ffn * width)
            if keep_n < 1:
                raise CompressUserError(f"--ffn {cfg.ffn} would remove every FFN channel")
            for block in blocks:
                out_w = _out_in_weight(model.get_submodule(block.ffn_out))
                score = out_w.norm(dim=0)
                for n in block.ffn_in:
                    score = score * _out_in_weight(model.get_submodule(n)).norm(dim=1)
                if norms is not None:
                    score = out_w.norm(dim=0) * norms.sums[block.ffn_out]
                keep = torch.sort(torch.topk(score, keep_n).indices).values
                for n in block.ffn_in:
                    _set(model, n, _slice(model.get_submodule(n), keep, 0))
                _set(model, block.ffn_out, _slice(model.get_submodule(block.ffn_out), keep, 1))
            if family == "gpt2":
                config.n_inner = keep_n
            else:
                config.intermediate_size = keep_n
            report["ffn_channels"] = {"before": width, "after": keep_n}
        if cfg.heads:
            report["heads"] = _prune_llama_heads(model, blocks, cfg.heads, norms)
    return report


def _prune_llama_heads(
    model: Any, blocks: list[Block], share: float, norms: _InputNorms | None
) -> dict[str, Any]:
    """Remove whole KV groups (a KV head and the query heads sharing it), so GQA stays consistent."""
    import torch

    config = model.config
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    per_group = heads // kv
    drop = round(share * kv)
    if drop >= kv:
        raise CompressUserError(f"--heads {share} would remove all {kv} key/value head groups")
    if drop == 0:
        raise CompressUserError(
            f"--heads {share} removes no head group (the model has {kv} KV heads; use >= {1 / kv:.3f})"
        )
    keep_groups = kv - drop
    for b in blocks:
        assert b.q and b.k and b.v and b.o  # find_blocks names all four projections of a llama block
        o = model.get_submodule(b.o)
        col = o.weight.detach().norm(dim=0)  # [heads * head_dim]
        if norms is not None:
            col = col * norms.sums[b.o]
        group_score = col.view(kv, per_group * head_dim).norm(dim=1)
        groups = torch.sort(torch.topk(group_score, keep_groups).indices).values
        q_idx = torch.cat(
            [torch.arange(g * per_group * head_dim, (g + 1) * per_group * head_dim) for g in groups.tolist()]
        )
        kv_idx = torch.cat([torch.arange(g * head_dim, (g + 1) * head_dim) for g in groups.tolist()])
        _set(model, b.q, _slice(model.get_submodule(b.q), q_idx, 0))
        _set(model, b.k, _slice(model.get_submodule(b.k), kv_idx, 0))
        _set(model, b.v, _slice(model.get_submodule(b.v), kv_idx, 0))
        _set(model, b.o, _slice(o, q_idx, 1))
    config.num_attention_heads = keep_groups * per_group
    config.num_key_value_heads = keep_groups
    # Keep the head size explicit: it can no longer be derived from hidden_size / num_attention_heads.
    config.head_dim = head_dim
    return {"before": heads, "after": keep_groups * per_group, "kv_before": kv, "kv_after": keep_groups}


def rebuild(model: Any) -> Any:
    """A fresh model of the (edited) config carrying the pruned weights: proves the config describes them."""
    import torch

    from scaling.compat.transformers import model_from_config

    fresh = model_from_config(model_class(model.config), model.config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True)
    return fresh.eval()


# ---------------------------------------------------------------- command


def prune(source: str | Path, output: Path, cfg: PruneConfig, overwrite: bool = False) -> dict[str, Any]:
    """Prune `source` into `output` (a plain HF directory + compression.json); returns the manifest."""
    import torch

    validate(cfg)
    with tempfile.TemporaryDirectory(prefix="scaling-prune-") as tmp:
        loaded = load_hf(resolve_model_dir(source, Path(tmp)))
        if loaded.format != FORMAT_HF:
            raise CompressUserError(f"{source} is quantized; prune the float model, then quantize")
        model = loaded.model
        before = _param_count(model)
        results: dict[str, Any] = {"parameters_before": before}
        masks = None
        if cfg.method == "magnitude":
            masks = magnitude_prune(model, cfg.sparsity, cfg.scope)
            results.update(sparsity_of(model))
        else:
            batches = None
            if cfg.importance_data:
                docs = read_documents(cfg.importance_data)
                batches = calibration_batches(
                    docs, loaded.tokenizer, loaded.task, cfg.seq_len, cfg.importance_samples
                )
            results["removed"] = structured_prune(model, cfg, batches)
            model = rebuild(model)
        if cfg.recover_steps:
            from scaling.compress.recover import recover

            results["recovery"] = recover(model, loaded, cfg, masks)
            if masks is not None:
                results.update(sparsity_of(model))
        results["parameters_after"] = _param_count(model)
        manifest = {
            "kind": "prune",
            "format": FORMAT_HF,
            "method": cfg.method,
            "task": loaded.task,
            "source": str(source),
            "architecture": type(model).__name__,
            "settings": asdict(cfg),
            "results": results,
        }
        with atomic_output(output, overwrite) as out:
            model.save_pretrained(str(out))
            ids = torch.randint(
                0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0)
            )
            verify.record(model, ids, torch.ones_like(ids), out)
            copy_tokenizer(loaded.path, out, loaded.tokenizer)
            write_manifest(out, manifest)
    return manifest


def _param_count(model: Any) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
