"""The distillation objective: KL at temperature T with masks, the alpha mix, hidden and attention terms."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from scaling.compress.distill import DistillConfig
from scaling.compress.distill_loss import (
    attention_mse,
    default_layer_map,
    distill_loss,
    hidden_mse,
    kd_loss,
    kd_positions,
)


def reference_kl(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_t || p_s) per row via torch's own kl_div."""
    return F.kl_div(
        F.log_softmax(s / temperature, -1),
        F.log_softmax(t / temperature, -1),
        log_target=True,
        reduction="none",
    ).sum(-1)


def test_kd_loss_is_zero_for_equal_logits_and_matches_kl_div():
    torch.manual_seed(0)
    t = torch.randn(3, 5, 11)
    assert kd_loss(t, t, None, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    s = torch.randn(3, 5, 11)
    assert kd_loss(s, t, None, 3.0).item() == pytest.approx(reference_kl(s, t, 3.0).mean().item(), rel=1e-6)


def test_kd_loss_averages_only_masked_positions():
    torch.manual_seed(1)
    s, t = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    expected = reference_kl(s, t, 1.0)[mask].mean()
    assert kd_loss(s, t, mask, 1.0).item() == pytest.approx(expected.item(), rel=1e-6)
    # Garbage at masked-out positions changes nothing.
    s2 = s.clone()
    s2[~mask] = 1e4
    assert kd_loss(s2, t, mask, 1.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_positions_follow_the_task():
    labels = torch.tensor([[5, 6, -100, -100], [7, -100, 8, -100]])
    assert kd_positions("clm", labels).tolist() == [[True, False, False], [False, True, False]]
    assert kd_positions("mlm", labels).tolist() == [[True, True, False, False], [True, False, True, False]]
    assert kd_positions("seq-cls", torch.tensor([0, 1])) is None


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_total_mixes_task_loss_and_scaled_kl(alpha):
    torch.manual_seed(2)
    s, t = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 1])
    task_loss = F.cross_entropy(s, labels)
    cfg = DistillConfig(teacher="t", student="s", alpha=alpha, temperature=2.0)
    parts = distill_loss(
        cfg,
        "seq-cls",
        SimpleNamespace(logits=s, loss=task_loss),
        SimpleNamespace(logits=t),
        {"labels": labels},
    )
    kl = reference_kl(s.detach(), t, 2.0).mean()
    expected = alpha * task_loss.item() + (1 - alpha) * 4.0 * kl.item()
    assert parts.total.item() == pytest.approx(expected, rel=1e-5)
    assert parts.kd == pytest.approx(kl.item(), rel=1e-5)
    parts.total.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_clm_compares_each_position_with_the_same_next_token_prediction():
    torch.manual_seed(3)
    s, t = torch.randn(1, 4, 6), torch.randn(1, 4, 6)
    labels = torch.tensor([[1, 2, 3, -100]])  # last real label at position 2: logits 0 and 1 predict it
    cfg = DistillConfig(teacher="t", student="s", alpha=0.0, temperature=1.0)
    parts = distill_loss(
        cfg, "clm", SimpleNamespace(logits=s, loss=None), SimpleNamespace(logits=t), {"labels": labels}
    )
    assert parts.kd == pytest.approx(reference_kl(s[0, :2], t[0, :2], 1.0).mean().item(), rel=1e-6)


def test_hidden_mse_with_projection_and_padding():
    torch.manual_seed(4)
    hs = (torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    ht = (torch.randn(2, 3, 6), torch.randn(2, 3, 6))
    proj = torch.nn.Linear(4, 6, bias=False)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    got = hidden_mse(hs, ht, [(0, 0), (1, 1)], mask, proj)
    per = [((proj(hs[i]) - ht[i]).pow(2).mean(-1))[mask.bool()].mean() for i in range(2)]
    assert got.item() == pytest.approx(((per[0] + per[1]) / 2).item(), rel=1e-6)
    assert hidden_mse(ht, ht, [(0, 0), (1, 1)], mask, None).item() == 0.0


def test_attention_mse_handles_different_head_counts():
    torch.manual_seed(5)
    a_s = (torch.softmax(torch.randn(1, 2, 3, 3), -1),)
    a_t = (torch.softmax(torch.randn(1, 4, 3, 3), -1),)
    mask = torch.ones(1, 3)
    got = attention_mse(a_s, a_t, [(0, 0)], mask)
    expected = (a_s[0].mean(1) - a_t[0].mean(1)).pow(2).sum(-1).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert attention_mse(a_t, a_t, [(0, 0)], mask).item() == 0.0


def test_default_layer_map():
    assert default_layer_map(3, 6, [0, 2, 4]) == [0, 2, 4]
    assert default_layer_map(3, 6, None) == [1, 3, 5]
    assert default_layer_map(2, 2, None) == [0, 1]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"alpha": 1.5}, "--alpha"),
        ({"alpha": -0.1}, "--alpha"),
        ({"temperature": 0.0}, "--temperature"),
        ({"temperature": math.nan}, "--temperature"),
        ({"hidden_loss": -1.0}, "--hidden-loss"),
        ({"student": None}, "exactly one of --student and --student-layers"),
        ({"student_layers": 2}, "exactly one of --student and --student-layers"),
        ({"student": None, "student_layers": 2, "student_layer_map": [0]}, "names 1 layers"),
        ({"layer_map": [0, 1]}, "--layer-map"),
    ],
)
def test_settings_checks(changes, fragment):
    cfg = DistillConfig(teacher="t", **{"student": "s", **changes})
    rendered = " ".join(p.render() for p in cfg.problems())
    assert fragment in rendered
    assert not DistillConfig(teacher="t", student="s").problems()
