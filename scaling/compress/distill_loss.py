"""The distillation objective's arithmetic, free of any engine or layout:

    loss = alpha * task_loss + (1 - alpha) * T^2 * KL(teacher_T || student_T)
           + hidden_loss * MSE(proj(h_student), h_teacher) + attention_loss * MSE(A_student, A_teacher)

KL is taken at temperature T per predicted token (clm: positions whose next token is a label; mlm: the masked
positions) or per sample (seq-cls). Hidden states and attention maps are matched through a layer map (student
layer i <-> teacher layer map[i]); a learned linear projection bridges different widths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from scaling.compress.distill import DistillConfig

__all__ = [
    "LossParts",
    "aligned_logits",
    "attention_mse",
    "default_layer_map",
    "distill_loss",
    "hidden_mse",
    "kd_loss",
    "kd_per_position",
    "kd_positions",
]


@dataclass
class LossParts:
    """One micro-batch's objective and its terms (the terms detached, for reporting)."""

    total: torch.Tensor
    """What backward runs on."""
    task: float
    """The student's own task loss (cross-entropy against the labels)."""
    kd: float
    """KL(teacher || student) at temperature T, before the T^2 factor."""
    hidden: float = 0.0
    """Hidden-state MSE (0 when off)."""
    attention: float = 0.0
    """Attention-map MSE (0 when off)."""


def kd_positions(task: str, labels: torch.Tensor) -> torch.Tensor | None:
    """Which logits the KL compares: a bool mask shaped like the logits' leading dims (None: all samples)."""
    if task == "seq-cls":
        return None
    if task == "clm":
        # Position t predicts token t+1; only those with a real next token count.
        return labels[:, 1:] != -100
    return labels != -100


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """Mean KL(teacher_T || student_T) over the positions in `mask` (or over all rows), in fp32."""
    kl = kd_per_position(student_logits, teacher_logits, temperature)
    if mask is None:
        return kl.mean()
    mask = mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp(min=1.0)


def kd_per_position(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher_T || student_T) at every position (the last dimension is the vocabulary), in fp32."""
    import torch.nn.functional as F

    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1)


def aligned_logits(
    task: str, student: torch.Tensor, teacher: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if task == "clm":
        return student[:, :-1], teacher[:, :-1]
    return student, teacher


def hidden_mse(
    student_states: tuple[torch.Tensor, ...],
    teacher_states: tuple[torch.Tensor, ...],
    pairs: list[tuple[int, int]],
    token_mask: torch.Tensor,
    projection: Any | None,
) -> torch.Tensor:
    """Mean over layer pairs of the per-token MSE between (projected) student and teacher hidden states."""
    mask = token_mask.float()
    total: Any = 0.0  # a tensor after the first pair
    for s, t in pairs:
        hs = student_states[s].float()
        if projection is not None:
            hs = projection(hs)
        per_token = (hs - teacher_states[t].float()).pow(2).mean(-1)
        total = total + (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    return total / max(len(pairs), 1)


def attention_mse(
    student_maps: tuple[torch.Tensor, ...],
    teacher_maps: tuple[torch.Tensor, ...],
    pairs: list[tuple[int, int]],
    token_mask: torch.Tensor,
) -> torch.Tensor:
    """Mean over layer pairs of the squared error of attention rows (summed over keys), over real queries.

    With different head counts the maps are averaged over heads first."""
    mask = token_mask.float()
    total: Any = 0.0  # a tensor after the first pair
    for s, t in pairs:
        a_s, a_t = student_maps[s].float(), teacher_maps[t].float()
        if a_s.shape[1] != a_t.shape[1]:
            a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
        per_query = (a_s - a_t).pow(2).sum(-1).mean(1)  # [batch, queries]
        total = total + (per_query * mask).sum() / mask.sum().clamp(min=1.0)
    return total / max(len(pairs), 1)


def distill_loss(
    cfg: DistillConfig,
    task: str,
    student_out: Any,
    teacher_out: Any,
    batch: dict[str, torch.Tensor],
    *,
    layer_pairs: list[tuple[int, int]] | None = None,
    projection: Any | None = None,
) -> LossParts:
    """The objective of one micro-batch from both models' outputs (see the module docstring)."""

    labels = batch["labels"]
    s_logits, t_logits = aligned_logits(task, student_out.logits, teacher_out.logits)
    kd = kd_loss(s_logits, t_logits, kd_positions(task, labels), cfg.temperature)
    task_loss = student_out.loss if cfg.alpha > 0 else torch.zeros((), device=kd.device)
    total = cfg.alpha * task_loss.float() + (1.0 - cfg.alpha) * cfg.temperature**2 * kd
    parts = LossParts(total=total, task=float(task_loss.detach()), kd=float(kd.detach()))
    if cfg.hidden_loss > 0 or cfg.attention_loss > 0:
        assert layer_pairs is not None
        ids = batch["input_ids"]
        token_mask = batch.get("attention_mask")
        if token_mask is None:
            token_mask = torch.ones_like(ids)
        if cfg.hidden_loss > 0:
            # Index 0 of hidden_states is the embedding output; layer i's output is index i + 1.
            pairs = [(0, 0)] + [(s + 1, t + 1) for s, t in layer_pairs]
            hidden = hidden_mse(
                student_out.hidden_states, teacher_out.hidden_states, pairs, token_mask, projection
            )
            total = total + cfg.hidden_loss * hidden
            parts.hidden = float(hidden.detach())
        if cfg.attention_loss > 0:
            attention = attention_mse(student_out.attentions, teacher_out.attentions, layer_pairs, token_mask)
            total = total + cfg.attention_loss * attention
            parts.attention = float(attention.detach())
        parts.total = total
    return parts


def default_layer_map(student_layers: int, teacher_layers: int, kept: list[int] | None) -> list[int]:
    """A reduced student matches the layers it was copied from; any other evenly spaced, last to last."""
    if kept is not None and len(kept) == student_layers:
        return list(kept)
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]
