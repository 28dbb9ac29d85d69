"""Pipeline parity: the pipelined GPT-2/Llama computes the plain model's losses and ends at its weights."""

from __future__ import annotations

import pytest
import torch
from harness import run_ranks
from ranks_parallel import pipe_parity, reference_run, tiny_model

STEPS, MICRO, ACCUM, SEQ = 5, 2, 2, 16
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 2e-5  # after 5 Adam steps at lr 1e-3: reduction-order noise, far below one update (1e-3)


def _merged(results: list[dict]) -> dict[str, torch.Tensor]:
    merged: dict[str, torch.Tensor] = {}
    for result in results:
        merged.update({k: torch.from_numpy(v) for k, v in result["weights"].items()})
    return merged


def _check(model_name: str, tokenizer: str, results: list[dict], count: int) -> None:
    ref_losses, ref_weights = reference_run(tiny_model(model_name, tokenizer), STEPS, count, MICRO, SEQ)
    for result in results:  # every rank reports the same (data-parallel averaged) losses
        for got, want in zip(result["losses"], ref_losses, strict=True):
            assert abs(got - want) <= LOSS_RTOL * abs(want), (result["losses"], ref_losses)
    weights = _merged(results)
    hf_names = {k for k in ref_weights if not k.endswith("lm_head.weight") or k in weights}
    assert set(weights) == hf_names, set(weights) ^ hf_names
    worst = max((weights[k] - ref_weights[k]).abs().max().item() for k in weights)
    assert worst <= WEIGHT_ATOL, worst


@pytest.mark.parametrize(
    ("model_name", "zero", "checkpoint_interval"), [("tiny-gpt2", 0, 0), ("tiny-llama", 1, 1)]
)  # ZeRO-0 exercises the clip-norm fix; ZeRO-1 the partitioned optimizer, with activation checkpointing
def test_two_stage_pipeline_matches_plain_model(clm_tokenizer, model_name, zero, checkpoint_interval):
    results = run_ranks(
        pipe_parity, 2, model_name, str(clm_tokenizer), 2, zero, STEPS, MICRO, ACCUM, SEQ, checkpoint_interval
    )
    _check(model_name, str(clm_tokenizer), results, ACCUM)
