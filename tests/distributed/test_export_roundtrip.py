"""Export: what plain `transformers` loads from OUTPUT/final computes the engine's logits."""

from __future__ import annotations

import pytest
import torch
from harness import run_ranks
from ranks import train_and_logits

INPUT_IDS = [[5, 17, 42, 99, 7, 3, 250, 11], [8, 9, 10, 11, 12, 13, 14, 15]]


@pytest.mark.parametrize(
    ("model", "ds_config"), [("tiny-gpt2", "zero0"), ("tiny-gpt2", "zero2"), ("tiny-llama", "zero3")]
)
def test_exported_model_matches_engine_logits(tmp_path, small_corpus, clm_tokenizer, model, ds_config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    args = [
        "--model", model, "--data", str(small_corpus), "--tokenizer", str(clm_tokenizer), "--output", str(out),
        "--ds-config", ds_config, "--precision", "fp32", "--seq-len", "32", "--micro-batch", "2",
        "--lr", "3e-3", "--max-steps", "4", "--log-every", "2", "--no-progress", "--no-tensorboard",
    ]  # fmt: skip
    engine_logits = torch.tensor(run_ranks(train_and_logits, 2, args, INPUT_IDS)[0])

    final = out / "final"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer_config.json").is_file()
    hf = AutoModelForCausalLM.from_pretrained(final).eval()
    with torch.no_grad():
        hf_logits = hf(input_ids=torch.tensor(INPUT_IDS)).logits
    assert torch.allclose(hf_logits, engine_logits, rtol=0, atol=1e-6), (
        (hf_logits - engine_logits).abs().max()
    )

    tokenizer = AutoTokenizer.from_pretrained(final)
    prompt = tokenizer("To be, or not", return_tensors="pt")
    generated = hf.generate(
        **prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 8
    assert isinstance(tokenizer.decode(generated[0]), str)


def test_export_cli_from_run_directory(tmp_path, small_corpus, clm_tokenizer):
    from click.testing import CliRunner
    from ranks import train_cli
    from transformers import AutoModelForCausalLM

    from scaling.cli.main import cli

    out = tmp_path / "run"
    args = [
        "--model", "tiny-gpt2", "--data", str(small_corpus), "--tokenizer", str(clm_tokenizer), "--output", str(out),
        "--ds-config", "zero3", "--precision", "fp32", "--seq-len", "32", "--micro-batch", "2", "--max-steps", "2",
        "--no-progress", "--no-tensorboard", "--no-export",
    ]  # fmt: skip
    run_ranks(train_cli, 2, args)
    result = CliRunner().invoke(cli, ["export", str(out), "--output", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert model.config.model_type == "gpt2"
    # a checkpoint that is not one is a usage error, not a traceback
    bad = CliRunner().invoke(cli, ["export", str(tmp_path), "--output", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "not a checkpoint" in bad.output
