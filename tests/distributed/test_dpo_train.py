"""DPO end to end on a tiny model: at the start the policy is its reference (loss log 2, accuracy 0.5); on a
learnable preference (the correct spelling over a corrupted one) the reward accuracy on held-out pairs rises
above 0.8; one process (ZeRO-0) and two gloo ranks under ZeRO-3 (the reference in its own ZeRO-3 engine);
a resume reproduces the uninterrupted run exactly."""

from __future__ import annotations

import json
import math
import random

import pytest
from harness import run_ranks
from ranks import train_cli

WORDS = ["apple", "river", "stone", "cloud", "table", "window", "garden", "music", "paper", "light", "silver",
         "horse", "bread", "candle"]  # fmt: skip
FIGURES = ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy")


def _pairs(path, n, seed):
    """'Spell: w1 w2 w3' -> the words (chosen) or the words spelt backwards (rejected), in both formats."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            words = rng.sample(WORDS, 3)
            prompt, chosen, rejected = (
                "Spell: " + " ".join(words),
                " ".join(words),
                " ".join(w[::-1] for w in words),
            )
            record = (
                {"prompt": prompt, "chosen": chosen, "rejected": rejected}
                if i % 2
                else {
                    "messages": [{"role": "user", "content": prompt}],
                    "chosen": chosen,
                    "rejected": rejected,
                }
            )
            f.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    # Held-out pairs are other combinations of the words (seed 1), never seen in training.
    return _pairs(root / "train.jsonl", 200, 0), _pairs(root / "eval.jsonl", 40, 1)


def _args(out, pairs, ds_config, max_steps, *extra):
    train, held_out = pairs
    return ["--model", "tiny-gpt2", "--task", "dpo", "--data", str(train), "--eval-data", str(held_out),
            "--output", str(out), "--vocab-size", "200", "--seq-len", "64", "--lr", "5e-3", "--precision", "fp32",
            "--ds-config", ds_config, "--max-steps", str(max_steps), "--log-every", "1", "--dpo-beta", "0.1",
            "--no-progress", "--no-tensorboard", *extra]  # fmt: skip


def _check_learnt(records):
    steps = [r for r in records if "loss" in r]
    first = steps[0]
    assert first["step"] == 1
    # The policy is its reference at the start: every reward 0, the loss log 2, ties count one half.
    assert math.isclose(first["loss"], math.log(2), rel_tol=1e-6), first
    assert first["reward_margin"] == 0.0 and first["reward_accuracy"] == 0.5
    assert all(set(FIGURES) <= set(r) for r in steps)
    final = [r for r in records if "eval_loss" in r][-1]
    assert final["eval_reward_accuracy"] > 0.8, final
    assert final["eval_reward_margin"] > 0 and final["eval_reward_chosen"] > final["eval_reward_rejected"]
    assert final["eval_loss"] < math.log(2)
    assert steps[-1]["target_tokens"] > 0  # both answers' tokens, nothing else


def test_dpo_on_one_process_learns_the_preference_and_exports_a_causal_lm(tmp_path, pairs):
    [rank0] = run_ranks(train_cli, 1, _args(tmp_path / "run", pairs, "zero0", 16, "--micro-batch", "8"))
    assert rank0["exit"] == 0, rank0["message"]
    _check_learnt(rank0["records"])
    config = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]


def test_dpo_under_zero3_on_two_ranks_learns_and_resumes_exactly(tmp_path, pairs):
    n = 3
    args = ("--micro-batch", "4", "--save-every", str(n), "--no-export")
    straight = run_ranks(train_cli, 2, _args(tmp_path / "a", pairs, "zero3", 2 * n, *args))[0]
    assert straight["exit"] == 0, straight["message"]
    _check_learnt(straight["records"])
    first = run_ranks(
        train_cli, 2, _args(tmp_path / "b", pairs, "zero3", 2 * n, *args, "--halt-at-step", str(n))
    )[0]
    second = run_ranks(train_cli, 2, _args(tmp_path / "b", pairs, "zero3", 2 * n, *args, "--resume", "auto"))[
        0
    ]
    assert first["exit"] == 0 and second["exit"] == 0, (first["message"], second["message"])

    def figures(records):
        keys = ("loss_hex", *FIGURES)
        return {r["step"]: tuple(r[k] for k in keys) for r in records if "loss_hex" in r}

    full, resumed = (
        figures(straight["records"]),
        figures(second["records"]),
    )  # metrics.jsonl holds both halves
    assert sorted(full) == list(range(1, 2 * n + 1))
    assert {s: full[s] for s in range(n + 1, 2 * n + 1)} == {s: resumed[s] for s in range(n + 1, 2 * n + 1)}
    # The rebuilt reference is the initial policy, not the resumed one: the held-out figures agree too.
    evals = [[r for r in run["records"] if "eval_loss" in r][-1] for run in (straight, second)]
    assert evals[0] == evals[1]


def test_dpo_with_lora_measures_the_policy_against_itself_without_adapters(tmp_path, pairs, tiny_models):
    """The reference of a LoRA policy is its frozen base (adapters disabled, no second copy): at the start
    it equals the policy (LoRA's B matrices start at 0), under ZeRO-3 too; the adapters learn the preference."""
    # A template of tokens the frozen embeddings know (LoRA refuses added ones): its end token is the EOS.
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|endoftext|>\n{% endfor %}"
                        "{% if add_generation_prompt %}assistant: {% endif %}")  # fmt: skip
    args = _args(tmp_path / "run", pairs, "zero3", 16, "--micro-batch", "8", "--lora-r", "8", "--lr", "1e-2",
                 "--chat-template", str(template))  # fmt: skip
    args[args.index("tiny-gpt2")] = str(tiny_models["llama"])
    args.remove("--vocab-size"), args.remove("200")
    [rank0] = run_ranks(train_cli, 1, args)
    assert rank0["exit"] == 0, rank0["message"]
    _check_learnt(rank0["records"])
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
