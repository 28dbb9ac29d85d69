"""Chat SFT end to end on one rank: prompt masking is observable in the training loss (the issue's test)."""

from __future__ import annotations

import json
import random

import pytest
from harness import run_ranks
from ranks import train_cli

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "table",
    "window",
    "garden",
    "music",
    "paper",
    "light",
    "silver",
    "horse",
    "bread",
    "candle",
]
ANSWER = "The answer is yes."


def _conversations(path, n, seed):
    """Prompts of random words, always the same answer, in the three formats."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            q = " ".join(rng.choices(WORDS, k=12))
            record = [
                {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q},
                              {"role": "assistant", "content": ANSWER}]},
                {"instruction": q, "output": ANSWER},
                {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": ANSWER},
                                   {"from": "human", "value": rng.choice(WORDS)}, {"from": "gpt", "value": ANSWER}]},
            ][i % 3]  # fmt: skip
            f.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    return _conversations(root / "train.jsonl", 200, 0), _conversations(root / "eval.jsonl", 30, 1)


def _run(out, train, *extra):
    args = ["--model", "tiny-gpt2", "--task", "sft", "--data", str(train), "--output", str(out),
            "--vocab-size", "200", "--seq-len", "64", "--micro-batch", "8", "--lr", "3e-3", "--precision", "fp32",
            "--ds-config", "zero0", "--max-steps", "150", "--log-every", "10", "--no-progress", "--no-tensorboard",
            "--no-export", *extra]  # fmt: skip
    [rank0] = run_ranks(train_cli, 1, args)
    assert rank0["exit"] == 0, rank0["message"]
    return rank0["records"]


def test_assistant_only_loss_falls_near_zero_and_prompt_loss_cannot(tmp_path, chat_data):
    train, held_out = chat_data
    masked = _run(tmp_path / "masked", train, "--eval-data", str(held_out))
    unmasked = _run(tmp_path / "unmasked", train, "--train-on-prompt")
    masked_loss = [r["loss"] for r in masked if "loss" in r]
    unmasked_loss = [r["loss"] for r in unmasked if "loss" in r]
    # The answer is always the same: learnable to ~0. Random prompt words are not: their entropy stays.
    assert masked_loss[-1] < 0.15, masked_loss
    assert unmasked_loss[-1] > 0.4 and unmasked_loss[-1] > 4 * masked_loss[-1], unmasked_loss
    # Target tokens per step are logged: the prompts make many more targets.
    masked_targets = [r["target_tokens"] for r in masked if "loss" in r]
    unmasked_targets = [r["target_tokens"] for r in unmasked if "loss" in r]
    assert 0 < max(masked_targets) < min(unmasked_targets) <= 8 * 64
    [final_eval] = [r for r in masked if "eval_loss" in r][-1:]
    assert final_eval["eval_loss"] < 0.15
