"""DPO: preference records, answer-only labels, the pair batch, the loss against its closed form, the reference
(a frozen copy, or the policy with its adapters disabled), and the llama3 chat template."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from scaling.data.chat import IGNORE, LLAMA3, RecordError, end_token, prepare_chat_tokenizer
from scaling.data.preference import dpo_batch, encode_answer, encode_pairs, fit, parse_pair
from scaling.engine.dpo import (
    AdaptersDisabled,
    DpoObjective,
    FrozenCopy,
    dpo_losses,
    pair_sums,
    reference_for,
    sequence_logps,
)


@pytest.fixture(scope="module")
def chat_tokenizer(clm_tokenizer):
    from scaling.data import load_tokenizer

    tok = load_tokenizer(clm_tokenizer)
    prepare_chat_tokenizer(tok, None, trained_here=True)
    return tok


# -- records ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
         "chosen": "good", "rejected": "bad"},
        # TRL's conversational records: the prompt as messages, each answer one assistant message in a list.
        {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "good"}],
         "rejected": [{"role": "assistant", "content": "bad"}]},
    ],
    ids=["pairs", "messages", "trl-conversational"],
)  # fmt: skip
def test_each_format_becomes_a_prompt_and_two_answers(record):
    pair = parse_pair(json.dumps(record), None)
    assert pair.prompt[-1] == {"role": "user", "content": "q"}
    assert (pair.chosen, pair.rejected) == ("good", "bad")
    chosen, rejected = pair.conversations()
    assert chosen[:-1] == rejected[:-1] == pair.prompt
    assert chosen[-1] == {"role": "assistant", "content": "good"}


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ({"text": "x"}, "matches no preference format"),
        ({"prompt": "q", "chosen": "a"}, "matches no preference format"),
        ({"prompt": "q", "chosen": " ", "rejected": "b"}, "empty 'chosen' answer"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty 'prompt'"),
        ({"messages": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"}, "unknown role"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
          "chosen": "a", "rejected": "b"}, "must end with a user turn"),
        ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "one assistant message"),
    ],
    ids=["no-format", "no-rejected", "empty-answer", "empty-prompt", "unknown-role", "answered", "user-answer"],
)  # fmt: skip
def test_bad_records_are_refused_with_the_reason(record, fragment):
    with pytest.raises(RecordError, match=fragment):
        parse_pair(json.dumps(record), None)


def test_a_named_format_is_enforced():
    with pytest.raises(RecordError, match="messages record needs 'messages'"):
        parse_pair(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}), "messages")


# -- tokens and batches ------------------------------------------------------------------------------------


def test_only_the_final_answer_is_a_target_with_its_end_token(chat_tokenizer):
    tok = chat_tokenizer
    earlier = "An earlier answer."
    conversation = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": earlier},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "The final answer."},
    ]
    ids, labels = encode_answer(tok, conversation)
    targets = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert [label for label in labels if label != IGNORE] == targets
    text = tok.decode(targets).replace(" ", "")
    assert text.startswith("Thefinalanswer.<|im_end|>"), text
    assert earlier.replace(" ", "") not in text  # an earlier assistant turn is context, not a target
    assert labels[0] == IGNORE


def test_truncation_drops_the_oldest_prompt_tokens_and_keeps_the_answer():
    ids, labels = list(range(10)), [IGNORE] * 7 + [7, 8, 9]
    kept, kept_labels, cut = fit(ids, labels, 6)
    assert cut and kept == [4, 5, 6, 7, 8, 9] and kept_labels == [IGNORE] * 3 + [7, 8, 9]
    # An answer longer than the limit keeps one prompt token before it, and its beginning.
    kept, kept_labels, cut = fit(list(range(10)), [IGNORE] * 3 + list(range(3, 10)), 4)
    assert cut and kept == [2, 3, 4, 5] and kept_labels == [IGNORE, 3, 4, 5]
    assert fit([1, 2], [IGNORE, 2], 4) == ([1, 2], [IGNORE, 2], False)


def test_a_batch_holds_chosen_rows_then_rejected_rows_of_the_same_pairs(chat_tokenizer):
    records = [
        {"prompt": "Spell: apple", "chosen": "apple", "rejected": "elppa and more words here"},
        {"prompt": "Spell: a much longer prompt than the other", "chosen": "longer", "rejected": "regnol"},
    ]
    pairs = [parse_pair(json.dumps(r), None) for r in records]
    arrays, truncated = encode_pairs(chat_tokenizer, pairs, seq_len=64)
    assert truncated == 0 and all(a.shape[:2] == (2, 2) for a in arrays)
    batch = dpo_batch(arrays, pad=0)
    assert batch["input_ids"].shape[0] == 4
    for i, pair in enumerate(pairs):
        for row, conversation in ((i, pair.conversations()[0]), (2 + i, pair.conversations()[1])):
            ids, labels = encode_answer(chat_tokenizer, conversation)
            n = len(ids)
            assert batch["input_ids"][row, :n].tolist() == ids
            assert batch["labels"][row, :n].tolist() == labels
            assert batch["attention_mask"][row].sum() == n
            assert (batch["labels"][row, n:] == IGNORE).all()  # padding is never a target
    # The two rows of a pair share the prompt tokens.
    first = int((batch["labels"][0] != IGNORE).nonzero()[0])
    assert torch.equal(batch["input_ids"][0, :first], batch["input_ids"][2, :first])


# -- the loss ----------------------------------------------------------------------------------------------


def test_loss_and_rewards_equal_the_closed_form():
    pc, pr = torch.tensor([-3.0, -10.0, -4.0]), torch.tensor([-5.0, -2.0, -4.0])
    rc, rr = torch.tensor([-4.0, -9.0, -6.0]), torch.tensor([-4.0, -3.0, -6.0])
    beta = 0.25
    losses, chosen, rejected = dpo_losses(pc, pr, rc, rr, beta)
    for i in range(3):
        margin = beta * ((pc[i] - rc[i]) - (pr[i] - rr[i]))
        assert math.isclose(float(losses[i]), math.log1p(math.exp(-float(margin))), rel_tol=1e-6)
        assert math.isclose(float(chosen[i]), beta * float(pc[i] - rc[i]), rel_tol=1e-6)
        assert math.isclose(float(rejected[i]), beta * float(pr[i] - rr[i]), rel_tol=1e-6)
    sums = pair_sums(losses, chosen, rejected).tolist()
    assert sums[-1] == 3
    assert math.isclose(sums[0], float(losses.sum()), rel_tol=1e-9)
    assert math.isclose(sums[3], float((chosen - rejected).sum()), rel_tol=1e-6)
    # Rewards (chosen, rejected): (0.25, -0.25) right, (-0.25, 0.25) wrong, (0.5, 0.5) a tie counting one half.
    assert sums[4] == 1.5


def test_sequence_logps_sum_the_target_tokens_only():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, IGNORE], [IGNORE, 1, 2, 6, 0]])
    logp = torch.log_softmax(logits, -1)
    expected = [
        float(logp[0, 1, 3] + logp[0, 2, 4]),
        float(logp[1, 0, 1] + logp[1, 1, 2] + logp[1, 2, 6] + logp[1, 3, 0]),
    ]
    assert torch.allclose(sequence_logps(logits, labels), torch.tensor(expected), atol=1e-5)


def _tiny_gpt2(vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config)


def _pair_batch(chat_tokenizer, n=4):
    records = [{"prompt": f"Spell: word{i}", "chosen": f"word{i}", "rejected": f"{i}drow"} for i in range(n)]
    arrays, _ = encode_pairs(chat_tokenizer, [parse_pair(json.dumps(r), None) for r in records], 64)
    return dpo_batch(arrays, pad=0)


def _objective(beta=0.1):
    return DpoObjective(SimpleNamespace(dpo=SimpleNamespace(beta=beta)))  # type: ignore[arg-type]


def test_at_the_start_the_loss_is_log_2_and_the_accuracy_one_half(chat_tokenizer):
    from scaling.engine.dpo import disable_dropout

    policy = _tiny_gpt2(
        len(chat_tokenizer)
    ).train()  # dropout 0.1 by default: switched off as the objective does
    disable_dropout(policy)
    objective = _objective()
    objective.reference = FrozenCopy(copy.deepcopy(policy).eval().requires_grad_(False))
    batch = _pair_batch(chat_tokenizer)
    loss = objective.loss(policy, batch)
    assert math.isclose(float(loss.detach()), math.log(2), rel_tol=1e-6)
    loss.backward()  # the policy gets gradients, the reference none
    assert policy.transformer.wte.weight.grad is not None
    figures = objective.train_metrics()
    assert figures == {
        "reward_chosen": 0.0,
        "reward_rejected": 0.0,
        "reward_margin": 0.0,
        "reward_accuracy": 0.5,
    }
    totals = objective.eval_totals(policy, batch)
    metrics = objective.metrics(totals)
    assert (
        math.isclose(metrics["eval_loss"], math.log(2), rel_tol=1e-6)
        and metrics["eval_reward_accuracy"] == 0.5
    )


def test_with_dropout_on_the_policy_would_differ_from_its_reference(chat_tokenizer):
    """Why the objective switches dropout off: else the start is not log 2 but noise."""
    policy = _tiny_gpt2(len(chat_tokenizer)).train()
    objective = _objective()
    objective.reference = FrozenCopy(copy.deepcopy(policy).eval())
    loss = objective.loss(policy, _pair_batch(chat_tokenizer))
    assert not math.isclose(float(loss.detach()), math.log(2), rel_tol=1e-6)


class _Engine:
    """What the reference needs of a DeepSpeed engine: the module, a device, and calling it."""

    def __init__(self, module):
        self.module = module
        self.device = torch.device("cpu")

    def __call__(self, **inputs):
        return self.module(**inputs)


def test_a_policy_with_lora_adapters_is_its_own_reference_with_them_disabled(chat_tokenizer):
    from peft import LoraConfig, get_peft_model

    base = _tiny_gpt2(len(chat_tokenizer)).eval()
    batch = _pair_batch(chat_tokenizer)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        expected = base(**inputs).logits
    policy = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    )
    with torch.no_grad():  # a trained adapter moves the policy away from its base
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    engine = _Engine(policy)
    reference = reference_for(SimpleNamespace(), engine, chat_tokenizer)  # type: ignore[arg-type]
    assert isinstance(reference, AdaptersDisabled)
    assert torch.allclose(reference.logits(inputs), expected, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(policy(**inputs).logits, expected, atol=1e-3)  # adapters back on afterwards
    objective = _objective()
    objective.reference = reference
    _, chosen, rejected = objective.pair_losses(policy, batch)
    logps = sequence_logps(policy(**inputs).logits, batch["labels"]) - sequence_logps(
        expected, batch["labels"]
    )
    assert torch.allclose(chosen, 0.1 * logps[:4].detach(), atol=1e-5)
    assert torch.allclose(rejected, 0.1 * logps[4:].detach(), atol=1e-5)


# -- the llama3 template -----------------------------------------------------------------------------------


def test_llama3_template_is_built_in_with_its_end_token(clm_tokenizer):
    from scaling.data import load_tokenizer

    tok = load_tokenizer(clm_tokenizer)
    assert prepare_chat_tokenizer(tok, LLAMA3, trained_here=False) == LLAMA3
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
    )
    end = end_token(tok, LLAMA3)
    assert end.text == "<|eot_id|>" and end.id == tok.convert_tokens_to_ids("<|eot_id|>")
    ids, labels = encode_answer(tok, messages)
    assert [x for x in labels if x != IGNORE][-1] == end.id
    assert np.count_nonzero(np.asarray(labels) != IGNORE) < len(ids)


def test_reward_sums_between_log_records_survive_a_checkpoint(chat_tokenizer):
    from scaling.engine.dpo import disable_dropout

    policy = _tiny_gpt2(len(chat_tokenizer))
    disable_dropout(policy)
    reference = FrozenCopy(copy.deepcopy(policy).eval())
    with torch.no_grad():
        policy.lm_head.weight.add_(0.01 * torch.randn_like(policy.lm_head.weight))  # rewards other than 0
    saving, resumed = _objective(), _objective()
    saving.reference = resumed.reference = reference
    batch = _pair_batch(chat_tokenizer)
    saving.loss(policy, batch)  # a step after the last log record, then the checkpoint
    resumed.load_state_dict(json.loads(json.dumps(saving.state_dict())))  # rank states keep plain values
    saving.loss(policy, batch)
    resumed.loss(policy, batch)
    expected = saving.train_metrics()
    assert expected["reward_margin"] != 0.0
    assert resumed.train_metrics() == expected
