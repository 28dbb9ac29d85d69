"""QLoRA on a GPU: the frozen base held in 4 bits (bitsandbytes NF4), adapters trained in bf16, then the
export merges them into the full-precision base and writes the PEFT adapter directory."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA's 4-bit base needs a GPU"),
    pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="QLoRA needs bitsandbytes"),
]


@pytest.mark.parametrize("ds_config", ["zero2", "zero3"])
def test_qlora_trains_adapters_over_a_4bit_base_and_exports(tmp_path, small_corpus, tiny_models, ds_config):
    from click.testing import CliRunner
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from scaling.cli.main import cli

    base = tiny_models["llama"]
    out = tmp_path / "run"
    args = ["train", "--model", str(base), "--data", str(small_corpus), "--output", str(out), "--ds-config", ds_config,
            "--precision", "bf16", "--seq-len", "64", "--micro-batch", "4", "--lr", "1e-3", "--max-steps", "6",
            "--save-every", "3", "--log-every", "1", "--no-progress", "--lora-r", "8", "--lora-4bit"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert "LoRA r=8: trainable" in (out / "logs" / "rank-0.log").read_text()
    ids = torch.arange(32).view(1, 32)
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(out / "final").eval()(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base), out / "adapter"
        ).eval()
        want = adapted(input_ids=ids).logits
    assert (merged - want).abs().max() < 1e-4
