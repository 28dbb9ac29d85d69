"""Mixing: temperature weights, observed shares, dynamic updates within bounds, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scaling.data import DataConfig, build_eval_batches, build_train_stream
from scaling.data.mixing import dynamic_update, temperature_weights
from scaling.data.tokenizer import iter_training_text, train_sentencepiece

SHAKESPEARE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = list(iter_training_text([str(SHAKESPEARE)], max_sentences=4000))
    return train_sentencepiece(texts, tmp_path_factory.mktemp("tok"), vocab_size=500, model_type="bpe")


def test_temperature_rule():
    assert np.allclose(temperature_weights([90, 10], 1.0), [0.9, 0.1])
    assert np.allclose(temperature_weights([90, 10], 2.0), np.sqrt([90, 10]) / np.sqrt([90, 10]).sum())
    assert np.allclose(temperature_weights([90, 10], 1e6), [0.5, 0.5], atol=1e-4)


def test_dynamic_update_favours_high_loss_within_bounds():
    new = dynamic_update([0.5, 0.5], [4.0, 2.0], step_size=1.0, max_ratio=4.0)
    assert new[0] > 0.8 and abs(sum(new) - 1) < 1e-9
    capped = dynamic_update([0.9, 0.1], [0.0, 50.0], step_size=1.0, max_ratio=2.0)
    assert capped[1] <= 0.2 / (0.9 / 2 + 0.2) + 1e-9  # within p0*r before renormalising


def two_sources(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"text": f"alpha {i} " * 3}) + "\n" for i in range(3000))
    )
    (tmp_path / "b.jsonl").write_text(
        "".join(json.dumps({"text": f"beta {i} " * 3}) + "\n" for i in range(3000))
    )
    return str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")


def share_of_a(batches, tok) -> float:
    text = " ".join(tok.decode(b["input_ids"].flatten()) for b in batches)
    return text.count("alpha") / (text.count("alpha") + text.count("beta"))


def test_observed_share_matches_weights_and_is_deterministic(tmp_path, tok):
    a, b = two_sources(tmp_path)
    data = DataConfig(train=[f"{a}@0.8", f"{b}@0.2"], seq_len=64, chunk_docs=256)
    make = lambda: build_train_stream(data, tok, task="clm", micro_batch=8, dp_rank=0, dp_size=1, seed=1)  # noqa: E731
    s1, s2 = make(), make()
    batches = [next(s1) for _ in range(60)]
    assert all(torch.equal(x["input_ids"], next(s2)["input_ids"]) for x in batches)
    assert abs(share_of_a(batches, tok) - 0.8) < 0.04
    assert s1.metrics()["mix/weight/a.jsonl"] == pytest.approx(0.8)


def test_dynamic_mixing_shifts_weight_to_the_worse_source(tmp_path, tok):
    a, b = two_sources(tmp_path)
    data = DataConfig(
        train=[a, b], seq_len=64, chunk_docs=128, mix="dynamic", mix_update_every=10, mix_eval_batches=1
    )
    stream = build_train_stream(data, tok, task="clm", micro_batch=4, dp_rank=0, dp_size=1, seed=0)
    calls = []

    def evaluate(batches):  # stands in for the collective eval: source a is "hard"
        calls.append(len(batches))
        return 5.0 if "alpha" in tok.decode(batches[0]["input_ids"][0]) else 1.0

    assert stream.maybe_adapt(5, evaluate) is None
    report = stream.maybe_adapt(10, evaluate)
    assert report is not None and calls == [1, 1]
    assert report["mix/weight/a.jsonl"] > 0.75 and report["mix/loss/a.jsonl"] == 5.0
    state = stream.state_dict()
    assert state["weights"] == [report["mix/weight/a.jsonl"], report["mix/weight/b.jsonl"]]
    later = [next(stream) for _ in range(80)]
    assert share_of_a(later, tok) > 0.65


def test_eval_batches_are_equal_in_number_across_ranks(tok):
    data = DataConfig(eval=[str(SHAKESPEARE)], seq_len=64)
    per_rank = [
        build_eval_batches(data, tok, task="clm", micro_batch=4, dp_rank=r, dp_size=3, max_batches=5)
        for r in range(3)
    ]
    assert [len(b) for b in per_rank] == [5, 5, 5]
    assert not torch.equal(per_rank[0][0]["input_ids"], per_rank[1][0]["input_ids"])
