"""Memory estimate: the formulas against hand-computed values, parameter counting, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from scaling.cli.main import cli
from scaling.config.estimate import Layout, ModelShape, activation_bytes, estimate, model_shape, model_states

PSI = 1_000_000


@pytest.mark.parametrize(
    ("stage", "n", "params", "grads", "optim"),
    [
        (0, 8, 2 * PSI, 2 * PSI, 12 * PSI),  # 16Ψ
        (1, 8, 2 * PSI, 2 * PSI, 12 * PSI // 8),  # 4Ψ + 12Ψ/N
        (2, 8, 2 * PSI, 2 * PSI // 8, 12 * PSI // 8),  # 2Ψ + 14Ψ/N
        (3, 8, 2 * PSI // 8, 2 * PSI // 8, 12 * PSI // 8),  # 16Ψ/N
    ],
)
def test_mixed_precision_adam_matches_the_zero_paper(
    stage: int, n: int, params: int, grads: int, optim: int
) -> None:
    gpu, off = model_states(PSI, stage, n, "bf16")
    assert gpu == {"params": params, "grads": grads, "optimizer": optim}
    assert sum(off.values()) == 0


def test_zero_paper_example_7_5b_on_64_gpus() -> None:
    # ZeRO paper, Figure 1: Ψ = 7.5B, N = 64 -> 120 GB, 31.4 GB, 16.6 GB, 1.88 GB per GPU.
    psi = 7_500_000_000
    totals = [sum(model_states(psi, stage, 64, "fp16")[0].values()) / 1e9 for stage in range(4)]
    assert totals == pytest.approx([120, 31.4, 16.6, 1.875], abs=0.05)


def test_fp32_training_has_no_separate_master_copy_at_stage_0() -> None:
    gpu, _ = model_states(PSI, 0, 4, "fp32")
    assert gpu == {"params": 4 * PSI, "grads": 4 * PSI, "optimizer": 8 * PSI}  # 16Ψ, but no 2-byte copies
    gpu, _ = model_states(PSI, 2, 4, "fp32")
    assert gpu == {"params": 4 * PSI, "grads": PSI, "optimizer": 3 * PSI}  # 4Ψ + (4 + 12)Ψ/N


def test_offload_moves_optimizer_and_params_to_the_host() -> None:
    gpu, off = model_states(PSI, 2, 4, "bf16", offload_optimizer="cpu")
    assert gpu == {"params": 2 * PSI, "grads": PSI // 2, "optimizer": 0}
    assert off == {"params": 0, "grads": PSI, "optimizer": 3 * PSI}  # fp32 grads 4Ψ/N, states 12Ψ/N
    gpu, off = model_states(PSI, 3, 4, "bf16", offload_optimizer="cpu", offload_param="cpu")
    assert gpu["params"] == 0 and off["params"] == PSI // 2


def test_activations_follow_korthikanti() -> None:
    shape = ModelShape(name="x", params=PSI, hidden=1024, layers=24, heads=16, vocab=0)
    s, b, h, a = 2048, 4, 1024, 16
    plain = activation_bytes(shape, Layout(seq_len=s, micro_batch=b), "bf16")
    assert plain == 24 * s * b * h * (34 + 5 * a * s / h)
    recompute = activation_bytes(
        shape, Layout(seq_len=s, micro_batch=b, activation_checkpointing=True), "bf16"
    )
    assert recompute == 24 * 2 * s * b * h
    tp = activation_bytes(shape, Layout(seq_len=s, micro_batch=b, tensor_parallel=4, gpus_per_node=4), "bf16")
    assert tp == 24 * s * b * h * (10 + 24 / 4 + 5 * a * s / (h * 4))
    # Ulysses: token-local tensors hold s/sp tokens, attention scores cover s positions for a/sp heads
    sp = activation_bytes(
        shape, Layout(seq_len=s, micro_batch=b, sequence_parallel=4, gpus_per_node=4), "bf16"
    )
    assert sp == int(plain) // 4


def test_sequence_peers_share_one_copy_of_the_model_states() -> None:
    shape = ModelShape(name="x", params=8 * PSI, hidden=64, layers=1, heads=8, vocab=0)
    layout = Layout(gpus_per_node=8, sequence_parallel=4)
    assert layout.data_parallel == 2 and layout.zero_partitions == 8
    config = {"zero_optimization": {"stage": 3}}
    with_sp = estimate(shape, layout, config, "bf16")
    plain_dp8 = estimate(shape, Layout(gpus_per_node=8), config, "bf16")
    assert with_sp.gpu_params == plain_dp8.gpu_params == 2 * PSI  # params 2Ψ/N over all 8 ranks
    assert with_sp.data_parallel == 8


def test_logits_and_cpu_per_node() -> None:
    shape = ModelShape(name="x", params=PSI, hidden=64, layers=1, heads=1, vocab=1000)
    layout = Layout(nodes=2, gpus_per_node=4, seq_len=10, micro_batch=1, activation_checkpointing=True)
    cfg = {
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}, "reduce_bucket_size": 100}
    }
    est = estimate(shape, layout, cfg, "bf16")
    assert est.gpu_activations == 2 * 10 * 64 + 10 * 1000 * 10
    assert est.cpu_per_rank == 16 * PSI // 8
    assert est.cpu_per_node == 4 * est.cpu_per_rank
    assert est.gpu_buffers == pytest.approx(
        100 * 2 + 0.1 * (est.gpu_model_states + est.gpu_activations + 200), abs=1
    )


def _gpt2_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "model_type": "gpt2",
                "n_layer": 2,
                "n_embd": 64,
                "n_head": 2,
                "vocab_size": 256,
                "n_positions": 64,
            }
        )
    )
    return path


def test_parameters_are_counted_on_the_meta_device(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from scaling.config.estimate import model_shape

    path = _gpt2_config(tmp_path)
    real = sum(p.numel() for p in GPT2LMHeadModel(GPT2Config(**json.loads(path.read_text()))).parameters())
    for source in (str(path), str(tmp_path)):
        shape = model_shape(source)
        assert (shape.params, shape.hidden, shape.layers, shape.heads, shape.vocab) == (real, 64, 2, 2, 256)


def test_estimate_cli_json_matches_the_table_formulas(tmp_path: Path) -> None:
    path = _gpt2_config(tmp_path)
    args = [
        "estimate",
        "--model",
        str(path),
        "--ds-config",
        "zero3",
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--micro-batch",
        "2",
        "--seq-len",
        "32",
        "--json",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    psi = data["model"]["params"]
    assert data["layout"]["data_parallel"] == 8
    conf = data["configured"]
    assert conf["stage"] == 3
    assert conf["gpu_params"] == 2 * psi // 8 and conf["gpu_optimizer"] == 12 * psi // 8
    assert [row["stage"] for row in data["stages"]] == [0, 1, 2, 3, 2, 3]
    assert data["stages"][0]["gpu_model_states"] == 16 * psi
    table = CliRunner().invoke(cli, args[:-1])
    assert table.exit_code == 0
    assert "ZeRO-3 + opt/param offload" in table.output


def test_estimate_cli_rejects_an_unknown_model() -> None:
    result = CliRunner().invoke(cli, ["estimate", "--model", "no-such-model"])
    assert result.exit_code == 2
    assert "--model = 'no-such-model': neither a directory, a config.json nor a model preset" in result.output


def test_fused_attention_keeps_no_scores_and_real_models_default_to_it(tmp_path: Path) -> None:
    eager = ModelShape(name="x", params=PSI, hidden=1024, layers=24, heads=16, vocab=0)
    fused = ModelShape(name="x", params=PSI, hidden=1024, layers=24, heads=16, vocab=0, fused_attention=True)
    s, b, h = 2048, 4, 1024
    assert activation_bytes(fused, Layout(seq_len=s, micro_batch=b), "bf16") == 24 * s * b * h * 34
    assert activation_bytes(eager, Layout(seq_len=s, micro_batch=b), "bf16") > 5 * 24 * s * b * h * 34
    # transformers builds Llama with SDPA unless the config says otherwise; eager stays eager.
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 128, "vocab_size": 100}  # fmt: skip
    (tmp_path / "sdpa.json").write_text(json.dumps(config))
    (tmp_path / "eager.json").write_text(json.dumps({**config, "attn_implementation": "eager"}))
    assert model_shape(str(tmp_path / "sdpa.json")).fused_attention is True
    assert model_shape(str(tmp_path / "eager.json")).fused_attention is False


def test_prefetch_bucket_is_read_under_either_of_its_names() -> None:
    shape = ModelShape(name="x", params=10**9, hidden=64, layers=1, heads=1, vocab=0)
    prefixed = {
        "zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": 1000, "reduce_bucket_size": 10}
    }
    plain = {"zero_optimization": {"stage": 3, "prefetch_bucket_size": 1000, "reduce_bucket_size": 10}}
    default = {"zero_optimization": {"stage": 3, "reduce_bucket_size": 10}}
    a, b, c = (estimate(shape, Layout(), cfg, "bf16") for cfg in (prefixed, plain, default))
    assert a.gpu_buffers == b.gpu_buffers < c.gpu_buffers
