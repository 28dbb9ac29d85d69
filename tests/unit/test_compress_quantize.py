"""Quantization through INC on tiny GPT-2 / Llama / BERT models built from configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("neural_compressor")

from scaling.compress import inc
from scaling.compress.config import QuantizeConfig
from scaling.compress.errors import (
    CompressionFailed,
    CompressUserError,
    MissingPackageError,
    UnsupportedError,
)
from scaling.compress.model_io import load_compressed, load_hf
from scaling.compress.quantize import _verify_replaced, quantize, validate
from scaling.compress.verify import CHECK_FILE

CALIB = dict(calib_data="builtin:pydoc", calib_samples=4, seq_len=32)


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]) -> dict[str, Path]:
    return tiny_models


@pytest.fixture(scope="module")
def outputs(
    models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, dict]]:
    """One quantized output per method/architecture pair, shared by the checks below."""
    out = tmp_path_factory.mktemp("quantized")
    runs = {
        "gpt2-rtn4": ("gpt2", QuantizeConfig(method="rtn", bits=4, group_size=32)),
        "llama-gptq4": ("llama", QuantizeConfig(method="gptq", bits=4, group_size=32, **CALIB)),
        "bert-awq4": ("bert-mlm", QuantizeConfig(method="awq", bits=4, group_size=32, **CALIB)),
        "bertcls-rtn8": ("bert-cls", QuantizeConfig(method="rtn", bits=8, group_size=-1)),
        "llama-dynamic": ("llama", QuantizeConfig(method="dynamic", bits=8)),
        "gpt2-static": ("gpt2", QuantizeConfig(method="static", bits=8, **CALIB)),
    }
    return {name: (out / name, quantize(models[src], out / name, cfg)) for name, (src, cfg) in runs.items()}


def test_weight_only_outputs_shrink_linear_weights(outputs: dict[str, tuple[Path, dict]]) -> None:
    for name in ("gpt2-rtn4", "llama-gptq4", "bert-awq4"):
        res = outputs[name][1]["results"]
        assert res["linear_size_ratio"] <= 0.16, (name, res)
        assert res["output_rel_error"] < 0.3, (name, res)
    res = outputs["bertcls-rtn8"][1]["results"]
    assert res["linear_size_ratio"] <= 0.31  # the classifier stays float: counted at 4 bytes a weight
    assert res["output_rel_error"] < 0.02


def test_manifest_records_method_versions_and_trap_workarounds(outputs: dict[str, tuple[Path, dict]]) -> None:
    path, _ = outputs["gpt2-rtn4"]
    manifest = json.loads((path / "compression.json").read_text())
    assert manifest["format"] == "inc-woq"
    assert manifest["conv1d_to_linear"] is True
    assert manifest["settings"]["bits"] == 4
    assert {"torch", "transformers", "neural-compressor"} <= set(manifest["versions"])
    assert (path / "quantized_weight.pt").is_file() and (path / "config.json").is_file()
    assert (path / "tokenizer.json").is_file() and (path / CHECK_FILE).is_file()


def test_gpt2_reloads_quantized_not_fp32(outputs: dict[str, tuple[Path, dict]]) -> None:
    # The INC trap: without Conv1D -> Linear, load() hands back the float model without a word.
    loaded = load_compressed(outputs["gpt2-rtn4"][0])
    types = inc.woq_module_types()
    assert sum(isinstance(m, types) for m in loaded.model.modules()) == 8
    assert type(loaded.model).__name__ == "GPT2LMHeadModel"


def test_dynamic_int8_is_not_all_zero(outputs: dict[str, tuple[Path, dict]]) -> None:
    # Without a forward between prepare and convert, PT2E dynamic quantizes every weight to zero (rel err 1.0).
    for name in ("llama-dynamic", "gpt2-static"):
        assert outputs[name][1]["results"]["output_rel_error"] < 0.1, name


def test_reload_in_fresh_process_is_exact(outputs: dict[str, tuple[Path, dict]]) -> None:
    dirs = [str(p) for p, _ in outputs.values()]
    code = (
        "import json, sys; from scaling.compress.verify import verify_reload; "
        "print(json.dumps([verify_reload(d) for d in sys.argv[1:]]))"
    )
    proc = subprocess.run([sys.executable, "-c", code, *dirs], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    checks = json.loads(proc.stdout.strip().splitlines()[-1])
    for d, check in zip(dirs, checks, strict=True):
        assert check["max_abs_diff"] == 0.0, (d, check)
        assert check["argmax_agreement"] == 1.0, (d, check)


def test_verify_catches_unreplaced_layers(models: dict[str, Path]) -> None:
    fp = load_hf(models["llama"]).model
    with pytest.raises(CompressionFailed, match="were not quantized"):
        _verify_replaced(fp, ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"])


def test_tune_respects_the_quality_drop(models: dict[str, Path], tmp_path: Path) -> None:
    # A loose bound accepts the first (most compressed) grid point.
    loose = quantize(
        models["llama"], tmp_path / "loose", QuantizeConfig(tune=True, max_quality_drop=0.5, **CALIB)
    )
    assert loose["tuning"]["chosen"] == {"bits": 4, "group_size": 128}
    assert len(loose["tuning"]["trials"]) == 1
    # A tight one rejects it (its measured loss is above the bound) and settles on a later point within it.
    tight = quantize(
        models["llama"], tmp_path / "tight", QuantizeConfig(tune=True, max_quality_drop=1e-4, **CALIB)
    )
    t = tight["tuning"]
    first, last = t["trials"][0], t["trials"][-1]
    assert 1 - first["score"] / t["baseline"] > t["tolerable_loss"]
    assert 1 - last["score"] / t["baseline"] <= t["tolerable_loss"]
    assert t["chosen"] == last["settings"] != first["settings"]
    assert tight["settings"]["group_size"] == t["chosen"]["group_size"]


def test_tune_fails_cleanly_when_nothing_fits(models: dict[str, Path], tmp_path: Path) -> None:
    cfg = QuantizeConfig(method="rtn", tune=True, max_quality_drop=1e-7, **CALIB)
    with pytest.raises(CompressionFailed, match="no setting in the tuning grid"):
        quantize(models["gpt2"], tmp_path / "none", cfg)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("cfg", "error", "match"),
    [
        (QuantizeConfig(bits=8, group_size=-1, sym=False), UnsupportedError, "8-bit asymmetric"),
        (QuantizeConfig(bits=3), UnsupportedError, "3-bit"),
        (QuantizeConfig(group_size=48), UnsupportedError, "group size 48"),
        (QuantizeConfig(method="gptq"), CompressUserError, "gptq needs calibration data"),
        (QuantizeConfig(method="static", bits=8), CompressUserError, "--calib-data"),
        (QuantizeConfig(method="dynamic", bits=4), UnsupportedError, "int8 only"),
        (
            QuantizeConfig(method="smoothquant", bits=8, calib_data="x"),
            MissingPackageError,
            "intel_extension_for_pytorch",
        ),
        (QuantizeConfig(tune=True), CompressUserError, "--tune needs data"),
    ],
)
def test_validation_refuses_bad_combinations(cfg: QuantizeConfig, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        validate(cfg)


def test_missing_accelerate_is_reported_for_gptq(monkeypatch: pytest.MonkeyPatch) -> None:
    real = inc.importlib.util.find_spec
    monkeypatch.setattr(
        inc.importlib.util, "find_spec", lambda n, *a: None if n == "accelerate" else real(n, *a)
    )
    with pytest.raises(MissingPackageError, match="pip install accelerate"):
        inc.require_accelerate()


def test_gptq_config_gets_a_local_model_path(tmp_path: Path) -> None:
    # INC's GPTQ resolves model_path even when not layer-wise; "" makes it call snapshot_download("").
    cfg = inc.woq_config("gptq", 4, 32, True, tmp_path, ["lm_head"])
    assert Path(cfg.model_path).is_dir()
    assert cfg.use_layer_wise is False
