"""`scaling tokenizer transplant` and `scaling tokenizer extend` through Click, and their bad input (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from scaling.cli.main import cli

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def sst2_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scaling.data.tokenizer import iter_training_text, train_sentencepiece

    out = tmp_path_factory.mktemp("tok") / "sst2"
    texts = iter_training_text([f"{SHARED / 'sst2' / 'train.tsv'}:sentence"], max_sentences=5000)
    train_sentencepiece(texts, out, vocab_size=500, model_type="bpe")
    return out


def test_transplant_writes_a_plain_model_directory_with_the_new_tokenizer(
    tmp_path, tiny_models, sst2_tokenizer
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "moved"
    args = ["tokenizer", "transplant", str(tiny_models["llama"]), "--tokenizer", str(sst2_tokenizer)]
    result = CliRunner().invoke(cli, [*args, "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "500 rows:" in result.output and "0 left random" in result.output
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == model.lm_head.weight.shape[0] == len(tok) == 500
    assert model.config.eos_token_id == tok.eos_token_id
    with torch.no_grad():
        loss = model(
            **tok("a charming movie", return_tensors="pt"),
            labels=tok("a charming movie", return_tensors="pt")["input_ids"],
        ).loss
    assert torch.isfinite(loss)


def test_extend_adds_the_most_useful_domain_tokens_with_composed_rows(tmp_path, tiny_models):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny_models["llama"]
    out = tmp_path / "grown"
    data = f"{SHARED / 'sst2' / 'train.tsv'}:sentence"
    result = CliRunner().invoke(
        cli,
        [
            "tokenizer",
            "extend",
            str(src),
            "--data",
            data,
            "--add",
            "40",
            "--max-sentences",
            "3000",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    old, new = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
    assert len(new) == len(old) + 40
    text = "the film is a charming , often hilarious and wonderfully performed movie ."
    assert len(new(text)["input_ids"]) < len(old(text)["input_ids"])
    assert new.decode(new(text, add_special_tokens=False)["input_ids"]) == text
    before = AutoModelForCausalLM.from_pretrained(src).get_input_embeddings().weight
    after = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight
    assert torch.equal(after[: len(old)], before[: len(old)])
    added = len(old)
    pieces = old(new.convert_ids_to_tokens(added), add_special_tokens=False)["input_ids"]
    assert torch.allclose(after[added], before[pieces].mean(0))


def test_a_tokenizer_that_does_not_load_is_one_message_and_exit_2(tmp_path, tiny_models):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json", encoding="utf-8")
    args = ["tokenizer", "transplant", str(tiny_models["llama"]), "--tokenizer", str(broken)]
    result = CliRunner().invoke(cli, [*args, "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: tokenizer") and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_a_model_without_input_embeddings_is_one_message_and_exit_2(tmp_path, sst2_tokenizer):
    from transformers import ViTConfig, ViTModel

    vit = tmp_path / "vit"
    config = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                       image_size=8, patch_size=4)  # fmt: skip
    ViTModel(config).save_pretrained(vit)
    args = ["tokenizer", "transplant", str(vit), "--tokenizer", str(sst2_tokenizer)]
    result = CliRunner().invoke(cli, [*args, "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "no input embeddings" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
