"""Magnitude and structured pruning on tiny models; outputs load in plain transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from scaling.compress.config import PruneConfig
from scaling.compress.errors import CompressUserError, UnsupportedError
from scaling.compress.feed import main_output
from scaling.compress.model_io import load_hf
from scaling.compress.prune import block_linears, prune, validate
from scaling.compress.verify import verify_reload


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]) -> dict[str, Path]:
    return tiny_models


def _sparsity(path: Path, auto: type) -> float:
    model = auto.from_pretrained(str(path))
    layers = block_linears(model)
    return sum(int((m.weight == 0).sum()) for m in layers.values()) / sum(
        m.weight.numel() for m in layers.values()
    )


@pytest.mark.parametrize(("kind", "scope", "target"), [("gpt2", "global", 0.6), ("bert-mlm", "layer", 0.3)])
def test_magnitude_hits_target_sparsity(
    models: dict[str, Path], tmp_path: Path, kind: str, scope: str, target: float
) -> None:
    manifest = prune(
        models[kind], tmp_path / "out", PruneConfig(method="magnitude", sparsity=target, scope=scope)
    )
    assert abs(manifest["results"]["linear_sparsity"] - target) < 0.005
    # Measured again on what plain transformers loads from disk.
    auto = transformers.AutoModelForCausalLM if kind == "gpt2" else transformers.AutoModelForMaskedLM
    assert abs(_sparsity(tmp_path / "out", auto) - target) < 0.005


def test_layer_scope_prunes_every_layer_equally(models: dict[str, Path], tmp_path: Path) -> None:
    prune(models["llama"], tmp_path / "out", PruneConfig(method="magnitude", sparsity=0.4, scope="layer"))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    for name, m in block_linears(model).items():
        assert abs(float((m.weight == 0).float().mean()) - 0.4) < 0.005, name


def test_recovery_keeps_pruned_weights_zero(models: dict[str, Path], tmp_path: Path) -> None:
    cfg = PruneConfig(
        method="magnitude", sparsity=0.5, recover_steps=3, recover_data="builtin:pydoc", seq_len=32
    )
    manifest = prune(models["gpt2"], tmp_path / "out", cfg)
    assert manifest["results"]["recovery"]["steps"] == 3
    assert abs(manifest["results"]["linear_sparsity"] - 0.5) < 0.005


def test_structured_llama_removes_kv_groups_and_ffn(models: dict[str, Path], tmp_path: Path) -> None:
    cfg = PruneConfig(
        method="structured",
        heads=0.5,
        ffn=0.25,
        importance_data="builtin:pydoc",
        importance_samples=4,
        seq_len=32,
    )
    manifest = prune(models["llama"], tmp_path / "out", cfg)
    res = manifest["results"]
    assert res["parameters_after"] < res["parameters_before"]
    assert res["removed"]["heads"] == {"before": 4, "after": 2, "kv_before": 2, "kv_after": 1}
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (2, 1, 16)
    assert config["intermediate_size"] == 96
    # Plain transformers loads it, with the smaller shapes and the same outputs as the pruned model in memory.
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert sum(p.numel() for p in model.parameters()) == res["parameters_after"]
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (32, 64)
    assert verify_reload(tmp_path / "out")["max_abs_diff"] == 0.0


def test_structured_ffn_on_bert_and_gpt2_keeps_outputs_close(models: dict[str, Path], tmp_path: Path) -> None:
    for kind in ("bert-cls", "gpt2"):
        manifest = prune(models[kind], tmp_path / kind, PruneConfig(method="structured", ffn=0.5))
        assert manifest["results"]["parameters_after"] < manifest["results"]["parameters_before"]
        fp, pr = load_hf(models[kind]), load_hf(tmp_path / kind)
        ids = torch.randint(5, 900, (2, 16), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            a = main_output(fp.model, ids, torch.ones_like(ids))
            b = main_output(pr.model, ids, torch.ones_like(ids))
        assert float((a - b).norm() / a.norm()) < 0.5, kind


def test_bert_heads_are_refused_with_a_reason(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="head size is hidden_size / num_attention_heads"):
        prune(models["bert-mlm"], tmp_path / "out", PruneConfig(method="structured", heads=0.25))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (PruneConfig(sparsity=1.2), "must be in"),
        (PruneConfig(method="structured"), "needs --heads and/or --ffn"),
        (PruneConfig(recover_steps=5), "needs --data"),
        (PruneConfig(method="lottery"), "unknown prune method"),
    ],
)
def test_validation(cfg: PruneConfig, match: str) -> None:
    with pytest.raises(CompressUserError, match=match):
        validate(cfg)
