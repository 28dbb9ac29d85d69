"""Resume equality (one rank, two ranks, across epochs, with mixing, augmentation and mlm) and exactly-once."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import pytest
import torch

from scaling.data import DataConfig, build_train_stream
from scaling.data.tokenizer import iter_training_text, train_sentencepiece

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare.txt"
SST2 = SHARED / "sst2"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = list(iter_training_text([str(SHAKESPEARE), f"{SST2 / 'dev.tsv'}:sentence"], max_sentences=8000))
    return train_sentencepiece(texts, tmp_path_factory.mktemp("tok"), vocab_size=800, model_type="bpe")


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_resume(data, tok, task, *, k: int, n: int, dp_size: int = 1, micro_batch: int = 4):
    for rank in range(dp_size):
        make = partial(
            build_train_stream,
            data,
            tok,
            task=task,
            micro_batch=micro_batch,
            dp_rank=rank,
            dp_size=dp_size,
            seed=3,
        )
        full = make()
        reference = [next(full) for _ in range(k + n)]
        first = make()
        for _ in range(k):
            next(first)
        state = first.state_dict()
        resumed = make()
        resumed.load_state_dict(state)
        got = [next(resumed) for _ in range(n)]
        assert all(equal(a, b) for a, b in zip(reference[k:], got, strict=True)), (task, rank)
    return full


def small_corpus(tmp_path: Path) -> str:
    lines = SHAKESPEARE.read_text(encoding="utf-8").splitlines()[:1500]
    (tmp_path / "a.txt").write_text("\n".join(lines[:700]) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(lines[700:]) + "\n")
    return str(tmp_path / "*.txt")


def test_clm_resume_across_an_epoch_boundary_on_two_ranks(tmp_path, tok):
    data = DataConfig(train=[small_corpus(tmp_path)], seq_len=64, cross_doc_attention=False, chunk_docs=128)
    full = check_resume(data, tok, "clm", k=60, n=50, dp_size=2)
    assert full.epoch >= 1  # the compared range crossed an epoch boundary


def test_mlm_with_wwm_and_text_augmentation_resumes(tmp_path, tok):
    data = DataConfig(
        train=[small_corpus(tmp_path)], seq_len=64, augment="delete:0.1,swap:0.05,wwm:0.15", chunk_docs=100
    )
    check_resume(data, tok, "mlm", k=23, n=10)


def test_mixed_sources_resume_with_weights(tmp_path, tok):
    data = DataConfig(
        train=[f"{small_corpus(tmp_path)}@0.3", f"{SST2 / 'dev.tsv'}:sentence@0.7"],
        seq_len=64,
        chunk_docs=200,
    )
    check_resume(data, tok, "clm", k=17, n=10, dp_size=2)


def test_seq_cls_two_ranks_consume_every_row_once_per_epoch_with_an_interruption(tok):
    rows = [line.split("\t") for line in (SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    expected = sorted(tok.decode(tok(s, add_special_tokens=False)["input_ids"]) for s, _ in rows)
    data = DataConfig(train=[f"{SST2 / 'dev.tsv'}:sentence"], seq_len=128, chunk_docs=64)
    seen: list[str] = []
    for rank in range(2):
        make = partial(
            build_train_stream, data, tok, task="seq-cls", micro_batch=4, dp_rank=rank, dp_size=2, seed=5
        )
        stream = make()
        for i in range(1000):
            if i == 50:  # interruption: a fresh process resumes from the saved state
                state = stream.state_dict()
                stream = make()
                stream.load_state_dict(state)
            batch = next(stream)
            for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
                seen.append(tok.decode(row[mask.bool()][1:-1]))
            if stream.epoch == 1:
                break
        assert stream.epoch == 1
    assert sorted(seen) == expected


def test_resume_cost_does_not_grow_with_position(tok):
    data = DataConfig(train=[str(SHAKESPEARE)], seq_len=64, chunk_docs=256)
    stream = build_train_stream(data, tok, task="clm", micro_batch=4, dp_rank=0, dp_size=1, seed=0)
    states = []
    for i in range(400):
        next(stream)
        if i in (5, 399):
            states.append(stream.state_dict())
    timings = []
    for state in states:
        fresh = build_train_stream(data, tok, task="clm", micro_batch=4, dp_rank=0, dp_size=1, seed=0)
        start = time.perf_counter()
        fresh.load_state_dict(state)
        next(fresh)
        timings.append(time.perf_counter() - start)
    assert states[1]["chunk_state"]["sources"][0]["offset"] > states[0]["chunk_state"]["sources"][0]["offset"]
    assert timings[1] < 3 * timings[0] + 0.05
    assert len(str(states[1])) < 4000  # small state: offsets and a partial block, not replay logs
