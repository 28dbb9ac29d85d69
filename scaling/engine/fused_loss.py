"""A causal-LM loss that never materialises the `[tokens, vocab]` logits.

The plain HF path computes `logits = lm_head(hidden)` for every position, upcasts them to fp32 and runs
cross-entropy: at a 32k+ vocabulary those logits (and their fp32 copy, log-softmax and gradient) are the
largest tensors of a small model's step. Here the output projection and the cross-entropy run together in
chunks of positions; each chunk's gradient with respect to the hidden states and the projection weight is
computed during the forward (one pass over the vocabulary), so backward only scales stored gradients. Only
positions with a target are projected at all (chat SFT: the assistant tokens).

It is exact (the same sum of the same per-position terms, in fp32): tests/unit/test_fused_loss.py holds the
loss and every gradient to 1e-5 of the HF loss. It replaces the model's forward only where that holds: a
plain linear output head on a family without logit post-processing (softcapping, scaling), with the head's
weight local to the rank (not ZeRO-3, AutoTP or pipeline stages: see `fused_loss_blocker`).
"""

from __future__ import annotations

import types
from typing import Any

import torch

IGNORE = -100
CHUNK_LOGITS = 1 << 23
"""Logits (positions x vocabulary) per chunk: 32 MiB in fp32, whatever the vocabulary."""

# Families whose causal-LM head is `lm_head(hidden)` followed by HF's ForCausalLMLoss and nothing else.
PLAIN_HEAD_FAMILIES = frozenset(
    {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gpt2",
        "gpt_neox",
        "phi3",
        "olmo",
        "olmo2",
        "starcoder2",
        "smollm3",
    }
)
# Config attributes of families that post-process logits; a set value makes the fused loss inexact.
_LOGIT_POSTPROCESSING = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier_scale",
)

__all__ = ["enable_fused_loss", "fused_linear_cross_entropy", "fused_loss_blocker"]


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """sum over positions of CE(hidden @ weight.T + bias, target); gradients computed in forward, chunked."""

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
    ) -> torch.Tensor:
        needs = ctx.needs_input_grad
        total, grads = _chunked(
            hidden, weight, bias, targets, with_grads=True, weight_grads=bool(needs[1] or needs[2])
        )
        ctx.save_for_backward(*grads)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.needs = needs
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[Any, ...]:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        needs = ctx.needs
        return (
            grad_hidden * grad_total.to(hidden_dtype) if needs[0] else None,
            (grad_weight * grad_total).to(weight_dtype) if needs[1] else None,
            (grad_bias * grad_total).to(bias_dtype) if needs[2] else None,
            None,
        )


def _chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    with_grads: bool,
    weight_grads: bool = True,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The summed loss, and (with_grads) its gradients w.r.t. hidden, weight and bias.

    Logits are computed in the model's dtype and upcast, as HF's loss does; the weight gradient accumulates
    in fp32 over chunks so that chunking adds no rounding a single matmul would not have."""
    vocab = weight.shape[0]
    step = max(1, CHUNK_LOGITS // vocab)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if with_grads else hidden.new_empty(0)
    weight_grads = with_grads and weight_grads  # a frozen head (LoRA) needs no weight gradient
    grad_weight = (
        torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if weight_grads else None
    )
    grad_bias = (
        torch.zeros(vocab, dtype=torch.float32, device=weight.device)
        if weight_grads and bias is not None
        else None
    )
    for start in range(0, hidden.shape[0], step):
        h = hidden[start : start + step]
        y = targets[start : start + step]
        logits = torch.nn.functional.linear(h, weight, bias).float()
        log_norm = torch.logsumexp(logits, dim=-1)
        total += (log_norm - logits.gather(1, y.unsqueeze(1)).squeeze(1)).sum()
        if not with_grads:
            continue
        # d(sum CE)/d(logits) = softmax - onehot, computed in place of the logits to keep one buffer.
        grad_logits = logits.sub_(log_norm.unsqueeze(1)).exp_()
        grad_logits[torch.arange(y.shape[0], device=y.device), y] -= 1.0
        grad_logits_low = grad_logits.to(hidden.dtype)
        grad_hidden[start : start + step] = grad_logits_low @ weight
        if grad_weight is not None:
            grad_weight += grad_logits.t() @ h.float()
        if grad_bias is not None:
            grad_bias += grad_logits.sum(0)
    empty = hidden.new_empty(0)
    grads = (grad_hidden, grad_weight if grad_weight is not None else empty)
    return total, (*grads, grad_bias if grad_bias is not None else empty)


def fused_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor
) -> torch.Tensor:
    """HF's causal-LM loss (next-token targets, -100 ignored, mean over targets) of `lm_head(hidden)`.

    `hidden` is `[batch, seq, dim]` (the final normed hidden states), `labels` `[batch, seq]` unshifted."""
    targets = labels[:, 1:].reshape(-1)
    keep = targets != IGNORE
    count = keep.sum()
    positions = hidden[:, :-1].reshape(-1, hidden.shape[-1])[keep]
    targets = targets[keep]
    needs_grad = torch.is_grad_enabled() and (
        positions.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if needs_grad:
        total = _FusedLinearCrossEntropy.apply(positions, weight, bias, targets)
    else:
        total, _ = _chunked(positions, weight, bias, targets, with_grads=False)
    # HF divides by the target count (nan for a batch without targets, as here).
    return total / count


def fused_loss_blocker(
    model: Any, *, task: str, zero_stage: int, tensor_parallel: int, pipeline: bool
) -> str | None:
    """Why the fused loss cannot be exact for this model and layout (None: it can)."""
    if task not in ("clm", "sft"):
        return f"task {task} has no causal-LM head"
    if pipeline:
        return "pipeline stages compute their own loss"
    if tensor_parallel > 1:
        return "AutoTP shards the output head"
    if zero_stage == 3:
        return "ZeRO-3 partitions the output head's weight (gathered only inside its own forward)"
    model = _transformer(model)
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    if family not in PLAIN_HEAD_FAMILIES:
        return f"model family {family!r} is not one known to use a plain output head"
    for name in _LOGIT_POSTPROCESSING:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            return f"the model post-processes its logits ({name}={value})"
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        return f"the output head is a {type(head).__name__}, not a Linear"
    return None


def _transformer(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (whose forward ends in the transformers model's own)."""
    inner = getattr(model, "get_base_model", None)
    return inner() if callable(inner) else model


def enable_fused_loss(model: Any) -> None:
    """Make `model(**batch)` with labels return the fused loss (and no logits); without labels the model's
    own forward runs (generation, sequence-parallel shards, anything that needs logits)."""
    model = _transformer(model)
    own_forward = model.forward

    def forward(self: Any, *args: Any, labels: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if labels is None or args:
            return own_forward(*args, labels=labels, **kwargs)
        from transformers.modeling_outputs import CausalLMOutputWithPast

        outputs = self.base_model(**kwargs)
        head = self.get_output_embeddings()
        loss = fused_linear_cross_entropy(outputs.last_hidden_state, head.weight, head.bias, labels)
        return CausalLMOutputWithPast(loss=loss, logits=None)

    model.forward = types.MethodType(forward, model)
