"""Packing: pad fraction, packed-vs-padded loss equality on tiny random GPT-2 and Llama, seq-cls dynamic padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scaling.data import DataConfig, build_train_stream
from scaling.data.pipeline import pack_tokens, packed_batch
from scaling.data.tokenizer import iter_training_text, train_sentencepiece

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare.txt"
SST2_TRAIN = SHARED / "sst2" / "train.tsv"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = list(iter_training_text([str(SHAKESPEARE)], max_sentences=8000))
    return train_sentencepiece(texts, tmp_path_factory.mktemp("tok"), vocab_size=800, model_type="bpe")


def test_packing_on_shakespeare_has_under_one_percent_padding(tok):
    stream = build_train_stream(
        DataConfig(train=[str(SHAKESPEARE)], seq_len=128),
        tok,
        task="clm",
        micro_batch=8,
        dp_rank=0,
        dp_size=1,
        seed=0,
    )
    batches = [next(stream) for _ in range(40)]
    assert all(b["input_ids"].shape == (8, 128) for b in batches)
    assert stream.metrics()["data/pad_fraction"] < 0.01
    # The same documents padded one per row waste most of the batch.
    naive = build_train_stream(
        DataConfig(train=[str(SHAKESPEARE)], seq_len=128, packing=False),
        tok,
        task="clm",
        micro_batch=8,
        dp_rank=0,
        dp_size=1,
        seed=0,
    )
    for _ in range(40):
        next(naive)
    assert naive.metrics()["data/pad_fraction"] > stream.metrics()["data/pad_fraction"]


def test_pack_tokens_joins_documents_with_eos_and_carries_the_rest():
    blocks, carry = pack_tokens([[5, 6], [7, 8, 9], [10]], [4], eos=1, seq_len=4)
    assert blocks.tolist() == [[4, 5, 6, 1], [7, 8, 9, 1]] and carry == [10, 1]


def test_positions_restart_after_eos_and_first_tokens_are_not_targets():
    batch = packed_batch(np.array([[5, 6, 1, 7, 8, 1, 9, 9]]), eos=1, cross_doc_attention=False)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[5, 6, 1, -100, 8, 1, -100, 9]]
    assert "attention_mask" not in batch


def _tiny_model(kind: str, vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            bos_token_id=1,
            eos_token_id=1,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=2,
            attn_implementation="sdpa",
        )
        return GPT2LMHeadModel(config).eval()
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_padded_loss_per_document(kind, attn):
    vocab, eos = 50, 1
    gen = torch.Generator().manual_seed(1)
    docs = [torch.randint(2, vocab, (n,), generator=gen).tolist() for n in (7, 12, 5, 9)]
    blocks, _ = pack_tokens(docs, [], eos=eos, seq_len=sum(len(d) + 1 for d in docs))
    batch = packed_batch(blocks, eos=eos, cross_doc_attention=False)
    model = _tiny_model(kind, vocab)
    model.config._attn_implementation = attn
    with torch.no_grad():
        # use_cache=False as in training: HF derives the per-document mask from position_ids only without a cache.
        packed_logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]
        start = 0
        for doc in docs:
            ids = torch.tensor([[*doc, eos]])
            alone = model(input_ids=ids).logits[0]
            piece = packed_logits[start : start + ids.shape[1]]
            loss_alone = torch.nn.functional.cross_entropy(alone[:-1], ids[0, 1:])
            loss_packed = torch.nn.functional.cross_entropy(piece[:-1], ids[0, 1:])
            assert abs(loss_alone.item() - loss_packed.item()) < 1e-5
            start += ids.shape[1]
        # HF's own loss over the packed row equals the token-weighted mean of the per-document losses.
        out = model(**batch, use_cache=False)
        per_doc = sum(
            torch.nn.functional.cross_entropy(
                model(input_ids=torch.tensor([[*d, eos]])).logits[0, :-1],
                torch.tensor([*d, eos])[1:],
                reduction="sum",
            )
            for d in docs
        ) / sum(len(d) for d in docs)
        assert abs(out.loss.item() - per_doc.item()) < 1e-5
    # Without the position ids (plain causal attention over the row) the documents would see each other.
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    assert not torch.allclose(leaky, packed_logits, atol=1e-4)


def test_seq_cls_dynamic_padding_with_length_grouping(tok):
    data = DataConfig(train=[f"{SST2_TRAIN}:sentence"], seq_len=64)
    stream = build_train_stream(data, tok, task="seq-cls", micro_batch=16, dp_rank=0, dp_size=1, seed=0)
    widths = []
    for _ in range(30):
        batch = next(stream)
        assert batch["labels"].shape == (batch["input_ids"].shape[0],) and set(batch["labels"].tolist()) <= {
            0,
            1,
        }
        lengths = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == int(lengths.max()) <= 64
        assert (batch["input_ids"][:, 0] == tok.cls_token_id).all()
        widths.append(batch["input_ids"].shape[1])
    assert len(set(widths)) > 5  # padded to each batch's longest, not to seq_len
    assert stream.metrics()["data/pad_fraction"] < 0.05
