"""Offline preprocessing: shards round-trip into the train stream; mismatches are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scaling.data import DataConfig, build_train_stream, preprocess
from scaling.data.pipeline import pack_tokens
from scaling.data.tokenizer import iter_training_text, train_sentencepiece
from scaling.errors import DataError

SHAKESPEARE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_sentencepiece(
        iter_training_text([str(SHAKESPEARE)], max_sentences=4000), out, vocab_size=500, model_type="bpe"
    )
    return out


def test_preprocess_round_trip_into_the_train_stream(tmp_path, tok_dir):
    from scaling.data import load_tokenizer

    tok = load_tokenizer(tok_dir)
    result = preprocess(
        [str(SHAKESPEARE)],
        str(tok_dir),
        tmp_path / "packed",
        seq_len=64,
        workers=2,
        shard_blocks=1000,
        show_progress=False,
    )
    manifest = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    assert result.shards > 1 and manifest["blocks"] == result.blocks and manifest["dtype"] == "uint16"
    # The shards hold exactly the packed token sequence of the corpus.
    lines = [line for line in SHAKESPEARE.read_text(encoding="utf-8").splitlines() if line.strip()]
    expected, _ = pack_tokens(tok(lines, add_special_tokens=False)["input_ids"], [], tok.eos_token_id, 64)
    shards = [
        np.fromfile(tmp_path / "packed" / f"shard-{i:05d}.bin", dtype=np.uint16).reshape(-1, 64)
        for i in range(result.shards)
    ]
    assert np.array_equal(np.concatenate(shards), expected)
    data = DataConfig(train=[str(tmp_path / "packed")], seq_len=64)
    streams = [
        build_train_stream(data, tok, task="clm", micro_batch=8, dp_rank=r, dp_size=2, seed=0)
        for r in range(2)
    ]
    rows = set()
    steps = streams[0].steps_per_epoch(1)
    assert steps == (result.blocks // 2) // 8
    for stream in streams:
        for _ in range(steps):
            rows.update(map(tuple, next(stream)["input_ids"].tolist()))
    assert len(rows) >= 2 * steps * 8 - 5  # disjoint ranks; (a few identical blocks may repeat in text)
    state = streams[0].state_dict()
    tail = [next(streams[0]) for _ in range(3)]
    again = build_train_stream(data, tok, task="clm", micro_batch=8, dp_rank=0, dp_size=2, seed=0)
    again.load_state_dict(state)
    assert all(torch.equal(t["input_ids"], next(again)["input_ids"]) for t in tail)


def test_mismatches_are_clear_errors(tmp_path, tok_dir):
    from scaling.data import load_tokenizer

    preprocess([str(SHAKESPEARE)], str(tok_dir), tmp_path / "p", seq_len=64, show_progress=False)
    other = train_sentencepiece(
        iter_training_text([str(SHAKESPEARE)], max_sentences=2000),
        tmp_path / "t2",
        vocab_size=400,
        model_type="bpe",
    )
    with pytest.raises(DataError, match="different tokenizer"):
        build_train_stream(
            DataConfig(train=[str(tmp_path / "p")], seq_len=64),
            other,
            task="clm",
            micro_batch=2,
            dp_rank=0,
            dp_size=1,
            seed=0,
        )
    tok = load_tokenizer(tok_dir)
    with pytest.raises(DataError, match="seq_len 64"):
        build_train_stream(
            DataConfig(train=[str(tmp_path / "p")], seq_len=32),
            tok,
            task="clm",
            micro_batch=2,
            dp_rank=0,
            dp_size=1,
            seed=0,
        )
    shard = tmp_path / "p" / "shard-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"shard-00000\.bin"):
        build_train_stream(
            DataConfig(train=[str(tmp_path / "p")], seq_len=64),
            tok,
            task="clm",
            micro_batch=2,
            dp_rank=0,
            dp_size=1,
            seed=0,
        )
