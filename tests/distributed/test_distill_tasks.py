"""Distillation end to end on tiny models, one per task: the KD loss falls, the student moves toward the
teacher on held-out text, and OUTPUT/final is a plain HF student."""

from __future__ import annotations

import json

import pytest
from harness import run_ranks
from ranks_distill import distill_cli, held_out_kl, make_model

COMMON = ["--precision", "fp32", "--ds-config", "zero0", "--seq-len", "32", "--micro-batch", "4",
          "--log-every", "5", "--no-progress", "--no-tensorboard", "--eval-batches", "4"]  # fmt: skip


def losses(records):
    return [r["loss"] for r in records if "loss" in r]


def eval_kd(records):
    return [r["eval_kd_loss"] for r in records if "eval_kd_loss" in r]


@pytest.fixture(scope="module")
def sst2_small(shared_data, tmp_path_factory):
    lines = (shared_data / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    root = tmp_path_factory.mktemp("sst2")
    (root / "train.tsv").write_text("\n".join(lines[:801]) + "\n", encoding="utf-8")
    (root / "dev.tsv").write_text("\n".join([lines[0], *lines[801:865]]) + "\n", encoding="utf-8")
    return root


def held_out_texts(path, n=16):
    rows = path.read_text(encoding="utf-8").splitlines()
    return [r.split("\t")[0] for r in rows[-n:]]


def test_clm_layer_reduced_student(tmp_path, small_corpus, clm_tokenizer):
    teacher = make_model("gpt2", "clm", clm_tokenizer, tmp_path / "teacher", layers=4)
    out = tmp_path / "run"
    args = ["--teacher", str(teacher), "--student-layers", "2", "--task", "clm", "--data", str(small_corpus),
            "--eval-data", str(small_corpus), "--output", str(out), "--max-steps", "20", "--alpha", "0",
            "--lr", "3e-3", "--eval-every", "10", *COMMON]  # fmt: skip
    result = run_ranks(distill_cli, 1, args)[0]
    assert result["exit"] == 0
    curve = losses(result["records"])
    assert curve[-1] < 0.75 * curve[0], curve
    kd = eval_kd(result["records"])
    assert len(kd) == 2 and kd[1] < kd[0], kd
    texts = held_out_texts(small_corpus)
    before = held_out_kl(teacher, out / "student", "clm", texts)
    after = held_out_kl(teacher, out / "final", "clm", texts)
    assert after < 0.8 * before, (before, after)
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["n_layer"] == 2 and config["architectures"] == ["GPT2LMHeadModel"]
    assert json.loads((out / "distill_config.json").read_text())["kept_layers"] == [0, 2]


def test_mlm_with_hidden_and_attention_losses(tmp_path, small_corpus, clm_tokenizer):
    teacher = make_model("bert", "mlm", clm_tokenizer, tmp_path / "teacher", layers=4)
    out = tmp_path / "run"
    args = ["--teacher", str(teacher), "--student-layers", "2", "--student-layer-map", "1,3", "--task", "mlm",
            "--data", str(small_corpus), "--output", str(out), "--max-steps", "20", "--alpha", "0.2",
            "--temperature", "1", "--hidden-loss", "1", "--attention-loss", "1", "--lr", "3e-3",
            *COMMON]  # fmt: skip
    result = run_ranks(distill_cli, 1, args)[0]
    assert result["exit"] == 0
    curve = losses(result["records"])
    assert curve[-1] < curve[0], curve
    saved = json.loads((out / "distill_config.json").read_text())
    assert saved["kept_layers"] == [1, 3] and saved["layer_map"] == [1, 3]
    texts = held_out_texts(small_corpus)
    assert held_out_kl(teacher, out / "final", "mlm", texts) < held_out_kl(
        teacher, out / "student", "mlm", texts
    )


def test_seq_cls_narrower_student_with_projected_hidden_loss(tmp_path, sst2_small, clm_tokenizer):
    teacher = make_model("bert", "seq-cls", clm_tokenizer, tmp_path / "teacher", layers=4, init=0.5)
    student = tmp_path / "student.json"
    student.write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 16,
                                   "intermediate_size": 32, "num_attention_heads": 2,
                                   "max_position_embeddings": 128}))  # fmt: skip
    out = tmp_path / "run"
    args = ["--teacher", str(teacher), "--student", str(student), "--task", "seq-cls",
            "--data", str(sst2_small / "train.tsv"), "--eval-data", str(sst2_small / "dev.tsv"),
            "--output", str(out), "--max-steps", "40", "--alpha", "0", "--temperature", "1",
            "--hidden-loss", "0.1", "--lr", "5e-3", *COMMON]  # fmt: skip
    result = run_ranks(distill_cli, 1, args)[0]
    assert result["exit"] == 0
    curve = losses(result["records"])
    assert curve[-1] < 0.8 * curve[0], curve
    final = [r for r in result["records"] if "eval_accuracy" in r][-1]
    assert 0.0 <= final["eval_accuracy"] <= 1.0 and final["eval_kd_loss"] >= 0
    texts = held_out_texts(sst2_small / "dev.tsv", 32)
    assert held_out_kl(teacher, out / "final", "seq-cls", texts) < held_out_kl(
        teacher, out / "student", "seq-cls", texts
    )
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["hidden_size"] == 16 and config["architectures"] == ["BertForSequenceClassification"]
    # The projection trained alongside is not part of the exported student.
    from safetensors.torch import load_file

    assert not [k for k in load_file(out / "final" / "model.safetensors") if "projection" in k]
