"""Chat SFT data: conversation formats, assistant-only labels, the template's end token, packing isolation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scaling.data.chat import (
    CHATML,
    RecordError,
    encode_conversations,
    end_token,
    parse_record,
    prepare_chat_tokenizer,
    split_turns,
)
from scaling.data.pipeline import pack_conversations, sft_packed_batch
from scaling.errors import ConfigError

ANSWER = "The answer is yes."


@pytest.fixture(scope="module")
def chat_tokenizer(clm_tokenizer):
    from scaling.data import load_tokenizer

    tok = load_tokenizer(clm_tokenizer)
    assert prepare_chat_tokenizer(tok, None, trained_here=True) == CHATML
    return tok


@pytest.mark.parametrize(
    "record",
    [
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": ANSWER},
            ]
        },
        {"instruction": "q", "input": "", "output": ANSWER},
        {
            "conversations": [
                {"from": "system", "value": "s"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": ANSWER},
            ]
        },
    ],
    ids=["messages", "alpaca", "sharegpt"],
)
def test_each_format_becomes_role_content_messages(record):
    messages = parse_record(json.dumps(record), None)
    assert messages[-2:] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": ANSWER}]


def test_alpaca_input_joins_the_instruction():
    messages = parse_record(json.dumps({"instruction": "Translate", "input": "chat", "output": "cat"}), None)
    assert messages[0] == {"role": "user", "content": "Translate\n\nchat"}


def test_a_named_format_is_enforced():
    alpaca = json.dumps({"instruction": "q", "output": "a"})
    with pytest.raises(RecordError, match="'messages'"):
        parse_record(alpaca, "messages")


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ({"text": "hello"}, "matches no conversation format"),
        ({"messages": [{"role": "user", "content": "q"}]}, "no assistant turn"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
            "unknown role 'bot'",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
            "empty assistant",
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
            "unknown role",
        ),
        ({"instruction": "q", "output": ""}, "empty assistant"),
    ],
)
def test_bad_records_are_refused_with_the_reason(record, fragment):
    with pytest.raises(RecordError, match=fragment):
        parse_record(json.dumps(record), None)


def test_only_assistant_turns_are_targets_including_the_end_token(chat_tokenizer):
    tok = chat_tokenizer
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "two"},
    ]
    [(ids, labels)] = encode_conversations(tok, [messages], train_on_prompt=False)
    assert len(ids) == len(labels)
    targets = [i for i, lab in zip(ids, labels, strict=True) if lab != -100]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    # Every assistant turn (content, end token, newline) and nothing of the prompts.
    assert targets.count(end) == 2
    text = tok.decode(targets)
    assert "one" in text and "two" in text and "question" not in text and "user" not in text
    [(ids_all, labels_all)] = encode_conversations(tok, [messages], train_on_prompt=True)
    assert ids_all == ids and labels_all == ids


def test_turn_pieces_reassemble_the_rendered_conversation(chat_tokenizer):
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    pieces = split_turns(chat_tokenizer, messages)
    assert "".join(text for text, _ in pieces) == chat_tokenizer.apply_chat_template(messages, tokenize=False)
    assert [target for _, target in pieces] == [False, True]


def test_chatml_end_token_is_one_vocabulary_token(chat_tokenizer):
    end = end_token(chat_tokenizer, CHATML)
    assert end.text == "<|im_end|>" and end.id == chat_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_template_without_end_token_is_refused(clm_tokenizer, tmp_path):
    from scaling.data import load_tokenizer

    tok = load_tokenizer(clm_tokenizer)
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% endfor %}"
                        "{% if add_generation_prompt %}assistant: {% endif %}")  # fmt: skip
    name = prepare_chat_tokenizer(tok, str(template), trained_here=False)
    with pytest.raises(ConfigError, match="writes no end token") as err:
        end_token(tok, name)
    assert str(template) in str(err.value)


def test_end_token_outside_the_vocabulary_is_refused(clm_tokenizer, tmp_path):
    from scaling.data import load_tokenizer

    tok = load_tokenizer(clm_tokenizer)
    template = tmp_path / "eot.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|eot_id|>{% endfor %}"
                        "{% if add_generation_prompt %}assistant: {% endif %}")  # fmt: skip
    name = prepare_chat_tokenizer(tok, str(template), trained_here=False)
    with pytest.raises(ConfigError, match=r"end token '<\|eot_id\|>' is not a token of the vocabulary"):
        end_token(tok, name)


def test_an_eos_end_token_that_is_also_the_unk_token_is_accepted(tiny_models, tmp_path):
    """GPT-2-style tokenizers use one token as EOS and UNK: as a template's end token it is a known token."""
    from scaling.data import load_tokenizer

    tok = load_tokenizer(tiny_models["gpt2"])
    assert tok.eos_token == tok.unk_token == "<|endoftext|>"
    template = tmp_path / "eos.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|endoftext|>\n{% endfor %}"
                        "{% if add_generation_prompt %}assistant: {% endif %}")  # fmt: skip
    end = end_token(tok, prepare_chat_tokenizer(tok, str(template), trained_here=False))
    assert end.text == "<|endoftext|>" and end.id == tok.eos_token_id


def test_tokenizer_without_template_needs_one(clm_tokenizer):
    from scaling.data import load_tokenizer

    with pytest.raises(ConfigError, match="has no chat_template"):
        prepare_chat_tokenizer(load_tokenizer(clm_tokenizer), None, trained_here=False)


def _tiny_llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation="sdpa",
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def test_packed_conversations_do_not_attend_across_even_when_the_end_token_is_eos():
    eos = 1  # the template's end token is the EOS (as in SmolLM2-Instruct): it must not split a conversation
    gen = torch.Generator().manual_seed(3)
    convs = []
    for n in (9, 14, 6):
        ids = torch.randint(2, 40, (n,), generator=gen).tolist()
        ids[n // 2] = eos  # the end of a first assistant turn, inside the conversation
        ids[-1] = eos
        labels = ids if n == 14 else [-100] * (n // 3) + ids[n // 3 :]  # the second: --train-on-prompt
        convs.append((ids, labels))
    blocks, carry = pack_conversations(convs, [], seq_len=sum(len(c[0]) for c in convs))
    assert carry == [[], [], []]
    batch = sft_packed_batch(blocks)
    assert batch["position_ids"][0].tolist() == [p for ids, _ in convs for p in range(len(ids))]
    # The labels survive packing, except a later conversation's first token (nothing of its own predicts it).
    want = [lab for _, labels in convs for lab in labels]
    want[len(convs[0][0])] = -100
    assert batch["labels"][0].tolist() == want
    model = _tiny_llama(40)
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]
        start = 0
        for ids, _ in convs:
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            assert torch.allclose(packed[start : start + len(ids)], alone, atol=1e-5)
            start += len(ids)


def test_packing_carries_a_partial_conversation_into_the_next_chunk():
    convs = [([5, 6, 7, 8, 9], [-100, -100, 7, 8, 9]), ([10, 11, 12], [-100, 11, 12])]
    blocks, carry = pack_conversations(convs, [], seq_len=3)
    assert blocks.shape == (2, 3, 3)
    assert blocks[1, 0].tolist() == [8, 9, 10] and blocks[1, 2].tolist() == [0, 0, 1]
    assert carry == [[11, 12], [11, 12], [0, 0]]
    more, rest = pack_conversations([([20], [20])], carry, seq_len=3)
    assert more[0, 0].tolist() == [11, 12, 20] and more[0, 2].tolist() == [0, 0, 1] and rest == [[], [], []]
    assert np.array_equal(sft_packed_batch(more)["position_ids"][0].numpy(), [0, 1, 0])


def _chat_file(tmp_path, n=8):
    path = tmp_path / "chat.jsonl"
    record = {
        "messages": [
            {"role": "user", "content": "a long question " * 8},
            {"role": "assistant", "content": "ok"},
        ]
    }
    path.write_text((json.dumps(record) + "\n") * n)
    return path


def test_unpacked_rows_carry_assistant_labels_and_padding_is_ignored(chat_tokenizer, tmp_path):
    from scaling.data import DataConfig, build_train_stream

    data = DataConfig(train=[str(_chat_file(tmp_path))], seq_len=128, packing=False)
    batch = next(
        build_train_stream(data, chat_tokenizer, task="sft", micro_batch=2, dp_rank=0, dp_size=1, seed=0)
    )
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    targets = batch["labels"][0][batch["labels"][0] != -100]
    assert chat_tokenizer.decode(targets).replace(" ", "").startswith("ok<|im_end|>")
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_no_target_within_seq_len_is_a_data_error_not_a_hang(chat_tokenizer, tmp_path):
    from scaling.data import DataConfig, build_train_stream
    from scaling.errors import DataError

    data = DataConfig(train=[str(_chat_file(tmp_path))], seq_len=8, packing=False)
    stream = build_train_stream(data, chat_tokenizer, task="sft", micro_batch=2, dp_rank=0, dp_size=1, seed=0)
    with pytest.raises(DataError, match="no conversation has an assistant token within --seq-len 8"):
        next(stream)


def test_table_rows_with_other_formats_columns_null_are_detected(chat_tokenizer, tmp_path):
    """Parquet (and HF datasets) give every row every column: an alpaca row has messages = null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scaling.data import DataConfig, build_train_stream

    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "yes"}], "instruction": None, "output": None},
        {"messages": None, "instruction": "q", "output": "yes"},
    ] * 4  # fmt: skip
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert parse_record(json.dumps(rows[1]), None) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "yes"},
    ]
    data = DataConfig(train=[str(path)], seq_len=16)
    batch = next(
        build_train_stream(data, chat_tokenizer, task="sft", micro_batch=1, dp_rank=0, dp_size=1, seed=0)
    )
    assert (batch["labels"] != -100).any()
