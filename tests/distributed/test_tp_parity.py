"""AutoTP parity: the tensor-parallel Llama computes the plain model's losses and ends at its weights."""

from __future__ import annotations

import torch
from harness import run_ranks
from ranks_parallel import reference_run, tiny_model, tp_parity

STEPS, MICRO, ACCUM, SEQ = 5, 2, 2, 16
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 2e-5


def test_two_way_tensor_parallel_with_zero2_matches_plain_model(clm_tokenizer):
    zero = 2  # ZeRO-1 with AutoTP runs in test_tp_train (the autotp preset)
    results = run_ranks(tp_parity, 2, "tiny-llama", str(clm_tokenizer), 2, zero, STEPS, MICRO, ACCUM, SEQ)
    ref_losses, ref_weights = reference_run(
        tiny_model("tiny-llama", str(clm_tokenizer)), STEPS, ACCUM, MICRO, SEQ
    )
    for result in results:
        for got, want in zip(result["losses"], ref_losses, strict=True):
            assert abs(got - want) <= LOSS_RTOL * abs(want), (result["losses"], ref_losses)
    weights = {k: torch.from_numpy(v) for k, v in results[0]["weights"].items()}
    assert set(weights) == set(ref_weights)
    for name, value in weights.items():
        assert value.shape == ref_weights[name].shape, name  # gathered: full HF shapes, not shards
    worst = max((weights[k].float() - ref_weights[k]).abs().max().item() for k in weights)
    assert worst <= WEIGHT_ATOL, worst
