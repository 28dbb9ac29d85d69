"""Ulysses sequence parallelism: the sharded model computes the plain model's losses and ends at its weights."""

from __future__ import annotations

import pytest
import torch
from harness import run_ranks
from ranks_parallel import reference_losses, sp_parity, tiny_model

STEPS, MICRO, ACCUM, SEQ = 5, 2, 2, 16
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 2e-5
NORM_RTOL = 1e-4


@pytest.mark.parametrize(
    ("model_name", "zero", "packed", "checkpointing"),
    [
        ("tiny-llama", 2, False, False),
        ("tiny-llama", 3, True, False),
        ("tiny-gpt2", 1, True, False),
        ("tiny-llama", 0, False, True),
    ],
)
def test_two_way_sequence_parallel_matches_plain_model(
    clm_tokenizer, model_name, zero, packed, checkpointing
):
    results = run_ranks(
        sp_parity, 2, model_name, str(clm_tokenizer), 2, zero, STEPS, MICRO, ACCUM, SEQ, packed, checkpointing
    )
    ref = reference_losses(tiny_model(model_name, str(clm_tokenizer)), STEPS, ACCUM, MICRO, SEQ, packed)
    ref_weights = ref["weights"]
    for result in results:
        for got, want in zip(result["losses"], ref["losses"], strict=True):
            assert abs(got - want) <= LOSS_RTOL * abs(want), (result["losses"], ref["losses"])
        for got, want in zip(result["grad_norms"], ref["grad_norms"], strict=True):
            assert abs(got - want) <= NORM_RTOL * want, (result["grad_norms"], ref["grad_norms"])
    weights = {k: torch.from_numpy(v) for k, v in results[0]["weights"].items()}
    assert set(weights) == set(ref_weights)
    worst = max((weights[k] - ref_weights[k]).abs().max().item() for k in weights)
    assert worst <= WEIGHT_ATOL, worst
