"""`scaling compress export`: INC's weight-only outputs become directories plain transformers loads and runs,
with the outputs of the quantized model (GPT-2's Conv1D, Llama, and AWQ's folded input scales)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("neural_compressor")

from scaling.compress.config import QuantizeConfig
from scaling.compress.errors import CompressUserError
from scaling.compress.export import export_plain
from scaling.compress.feed import main_output
from scaling.compress.model_io import load_compressed
from scaling.compress.quantize import quantize

CALIB = dict(calib_data="builtin:pydoc", calib_samples=4, seq_len=32)


@pytest.mark.parametrize(
    ("source", "cfg", "auto"),
    [
        ("gpt2", QuantizeConfig(method="rtn", bits=4, group_size=32), "AutoModelForCausalLM"),
        ("llama", QuantizeConfig(method="rtn", bits=8, group_size=-1), "AutoModelForCausalLM"),
        ("bert-mlm", QuantizeConfig(method="awq", bits=4, group_size=32, **CALIB), "AutoModelForMaskedLM"),
    ],
)  # fmt: skip
def test_exported_model_loads_in_plain_transformers_with_the_quantized_outputs(
    tiny_models: dict[str, Path], tmp_path: Path, source: str, cfg: QuantizeConfig, auto: str
) -> None:
    import transformers

    quantized = tmp_path / "q"
    quantize(tiny_models[source], quantized, cfg)
    loader = getattr(transformers, auto)
    with pytest.raises(OSError, match=r"model\.safetensors"):  # why the export exists
        loader.from_pretrained(quantized)
    exported = tmp_path / "plain"
    from scaling.cli.main import cli

    result = CliRunner().invoke(cli, ["compress", "export", str(quantized), "--output", str(exported)])
    assert result.exit_code == 0, result.output
    model = loader.from_pretrained(exported).eval()  # no INC, no scaling: what a user would write
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    inputs = tokenizer(["the quick brown fox jumps over", "a lazy dog"], return_tensors="pt", padding=True)
    reference = load_compressed(quantized).model
    float_model = loader.from_pretrained(tiny_models[source]).eval()
    with torch.no_grad():
        got = main_output(model, inputs["input_ids"], inputs["attention_mask"])
        want = main_output(reference, inputs["input_ids"], inputs["attention_mask"])
        unquantized = main_output(float_model, inputs["input_ids"], inputs["attention_mask"])
    assert (got - want).abs().max() < 1e-4
    assert (got - unquantized).abs().max() > 1e-4  # it is the quantized model, not the float one
    # the export's own reload record holds too (what `compress evaluate` reads)
    from scaling.compress.verify import verify_reload

    assert verify_reload(exported)["max_abs_diff"] < 1e-5


def test_export_refuses_a_plain_model(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CompressUserError, match="already a plain HF model"):
        export_plain(tiny_models["gpt2"], tmp_path / "out")
