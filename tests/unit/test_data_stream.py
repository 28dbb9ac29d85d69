"""Stream details: steps_per_epoch matches reality, seq-cls augmentation keeps labels, HF source resume,
errors for bad configs, and the Click options that build a DataConfig."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from scaling.cli.data_options import data_config_from_options, data_options
from scaling.data import DataConfig, build_train_stream
from scaling.data.tokenizer import iter_training_text, train_sentencepiece
from scaling.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare.txt"
SST2_DEV = SHARED / "sst2" / "dev.tsv"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = list(iter_training_text([str(SHAKESPEARE), f"{SST2_DEV}:sentence"], max_sentences=6000))
    return train_sentencepiece(texts, tmp_path_factory.mktemp("tok"), vocab_size=600, model_type="bpe")


def batches_in_first_epoch(stream) -> int:
    count = 0
    while stream.epoch == 0:
        next(stream)
        count += 1
    return count


@pytest.mark.parametrize("task", ["seq-cls", "clm"])
def test_steps_per_epoch_matches_the_batches_of_a_pass(tok, task):
    source = f"{SST2_DEV}:sentence"
    data = DataConfig(train=[source], seq_len=64, chunk_docs=100)
    streams = [
        build_train_stream(data, tok, task=task, micro_batch=4, dp_rank=r, dp_size=2, seed=0)
        for r in range(2)
    ]
    actual = min(batches_in_first_epoch(s) for s in streams)
    assert streams[0].steps_per_epoch(1) == streams[1].steps_per_epoch(1)
    assert abs(streams[0].steps_per_epoch(1) - actual) <= 1
    assert streams[0].steps_per_epoch(2) == streams[0].steps_per_epoch(1) // 2


def test_seq_cls_augmentation_changes_text_and_keeps_labels(tok):
    plain = DataConfig(train=[f"{SST2_DEV}:sentence"], seq_len=128, chunk_docs=1)
    augmented = DataConfig(
        train=[f"{SST2_DEV}:sentence"], seq_len=128, chunk_docs=1, augment="delete:0.2,swap:0.1"
    )
    a = build_train_stream(plain, tok, task="seq-cls", micro_batch=1, dp_rank=0, dp_size=1, seed=0)
    b = build_train_stream(augmented, tok, task="seq-cls", micro_batch=1, dp_rank=0, dp_size=1, seed=0)
    changed = 0
    for _ in range(200):
        x, y = next(a), next(b)
        assert torch.equal(x["labels"], y["labels"])
        changed += not torch.equal(x["input_ids"], y["input_ids"])
    assert changed > 150


def test_hf_streaming_source_resumes(tmp_path, tok):
    path = tmp_path / "docs.jsonl"
    lines = [line for line in SHAKESPEARE.read_text(encoding="utf-8").splitlines() if line.strip()][:3000]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    data = DataConfig(train=[f"hf:{path}"], seq_len=64, chunk_docs=200)
    full = build_train_stream(data, tok, task="clm", micro_batch=4, dp_rank=1, dp_size=2, seed=0)
    reference = [next(full) for _ in range(30)]
    first = build_train_stream(data, tok, task="clm", micro_batch=4, dp_rank=1, dp_size=2, seed=0)
    for _ in range(20):
        next(first)
    resumed = build_train_stream(data, tok, task="clm", micro_batch=4, dp_rank=1, dp_size=2, seed=0)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(r["input_ids"], next(resumed)["input_ids"]) for r in reference[20:])


def test_user_mistakes_are_named(tmp_path, tok):
    with pytest.raises(DataError, match="ghost"):
        build_train_stream(
            DataConfig(train=[str(tmp_path / "ghost.txt")]),
            tok,
            task="clm",
            micro_batch=2,
            dp_rank=0,
            dp_size=1,
            seed=0,
        )
    with pytest.raises(ConfigError, match="weight"):
        build_train_stream(
            DataConfig(train=[f"{SHAKESPEARE}@0.5", str(SST2_DEV)]),
            tok,
            task="clm",
            micro_batch=2,
            dp_rank=0,
            dp_size=1,
            seed=0,
        )
    state = build_train_stream(
        DataConfig(train=[str(SHAKESPEARE)]), tok, task="clm", micro_batch=2, dp_rank=0, dp_size=2, seed=0
    ).state_dict()
    other = build_train_stream(
        DataConfig(train=[str(SHAKESPEARE)]), tok, task="clm", micro_batch=2, dp_rank=1, dp_size=2, seed=0
    )
    with pytest.raises(ConfigError, match="rank 0/2"):
        other.load_state_dict(state)


def test_click_options_build_the_config():
    @click.command()
    @data_options
    def show(**params):
        click.echo(json.dumps(data_config_from_options(params).__dict__))

    result = CliRunner().invoke(
        show,
        [
            "--data",
            "a/*.jsonl:text@0.7",
            "--data",
            "b.txt",
            "--mix",
            "dynamic",
            "--mix-temperature",
            "2",
            "--augment",
            "delete:0.1",
            "--no-cross-doc-attention",
            "--seq-len",
            "256",
        ],
    )
    assert result.exit_code == 0, result.output
    config = json.loads(result.output)
    assert config["train"] == ["a/*.jsonl:text@0.7", "b.txt"] and config["mix"] == "dynamic"
    assert config["mix_temperature"] == 2.0 and config["augment"] == "delete:0.1"
    assert config["cross_doc_attention"] is False and config["seq_len"] == 256
    assert CliRunner().invoke(show, ["--mix", "sometimes"]).exit_code == 2


def test_seq_cls_eval_batches_cover_the_set_equally_per_rank(tok):
    from scaling.data import build_eval_batches

    data = DataConfig(eval=[f"{SST2_DEV}:sentence"], seq_len=128)
    per_rank = [
        build_eval_batches(data, tok, task="seq-cls", micro_batch=8, dp_rank=r, dp_size=2, max_batches=1000)
        for r in range(2)
    ]
    assert len(per_rank[0]) == len(per_rank[1]) == 872 // 8 // 2
    labels = torch.cat([b["labels"] for batches in per_rank for b in batches])
    assert len(labels) == 872 - 872 % 16 and set(labels.tolist()) == {0, 1}
