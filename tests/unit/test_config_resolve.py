"""Resolution of presets and users' existing configs: values, their sources, explain's summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from scaling.cli.main import cli
from scaling.config.deepspeed import RunValues, list_presets, resolve_deepspeed
from scaling.config.explain import DEEPSPEED_DEFAULT, rows, summary
from scaling.errors import ConfigError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ds"
PRESETS = [
    "autotp",
    "pipeline",
    "zero0",
    "zero1",
    "zero2",
    "zero2_offload",
    "zero3",
    "zero3_nvme",
    "zero3_offload",
    "zeropp",
]


def test_all_presets_exist_and_resolve_for_a_multi_node_run() -> None:
    assert list_presets() == PRESETS
    for name in PRESETS:
        run = RunValues(world_size=16, gpus_per_node=8, micro_batch=2, grad_accum=4, hidden_size=64)
        resolved = resolve_deepspeed(name, [], run)
        assert resolved.config["train_batch_size"] == 2 * 4 * 16, name
        assert '"auto"' not in json.dumps(resolved.config), name


def test_sources_per_value_with_run_options_and_set() -> None:
    run = RunValues(
        world_size=4,
        micro_batch=3,
        grad_accum=2,
        lr=1e-3,
        precision="fp16",
        hidden_size=32,
        explicit=frozenset({"micro_batch", "lr", "precision"}),
    )
    resolved = resolve_deepspeed(
        "zero3", ["zero_optimization.overlap_comm=true", "fp16.initial_scale_power=12"], run
    )
    cfg, src = resolved.config, resolved.sources
    assert cfg["train_micro_batch_size_per_gpu"] == 3
    assert src["train_micro_batch_size_per_gpu"] == "option --micro-batch (filled 'auto')"
    assert src["gradient_accumulation_steps"] == "default of --grad-accum (filled 'auto')"
    assert cfg["train_batch_size"] == 24
    assert src["train_batch_size"] == "derived: micro 3 x accum 2 x dp 4"
    assert (cfg["fp16"]["enabled"], cfg["bf16"]["enabled"]) == (True, False)
    assert src["fp16.enabled"] == "option --precision (filled 'auto')"
    assert cfg["fp16"]["initial_scale_power"] == 12
    assert src["fp16.initial_scale_power"] == "--set fp16.initial_scale_power=12"
    assert src["zero_optimization.overlap_comm"] == "--set zero_optimization.overlap_comm=true"
    assert src["fp16.hysteresis"] == "preset zero3"
    assert cfg["zero_optimization"]["reduce_bucket_size"] == 32 * 32
    assert src["zero_optimization.reduce_bucket_size"] == "derived from hidden_size 32 (HF rule)"
    assert cfg["optimizer"]["params"]["lr"] == 1e-3
    assert src["optimizer.params.lr"] == "option --lr"


def test_explain_rows_add_deepspeed_defaults_and_summary_says_what_happens() -> None:
    run = RunValues(
        world_size=8,
        micro_batch=2,
        grad_accum=4,
        precision="fp16",
        hidden_size=64,
        explicit=frozenset({"precision"}),
    )
    resolved = resolve_deepspeed("zero3_offload", [], run)
    table = {r.path: r for r in rows(resolved)}
    assert table["zero_optimization.stage3_max_live_parameters"].source == DEEPSPEED_DEFAULT
    assert table["zero_optimization.offload_param.device"].source == "preset zero3_offload"
    text = "\n".join(summary(resolved))
    assert "ZeRO stage 3: optimizer states, gradients and parameters are partitioned" in text
    assert "optimizer states and the fp32 step to CPU; parameters to CPU" in text
    assert "fp16 with dynamic loss scaling (starts at 2^16" in text
    assert "micro 2 x accum 4 x dp 8 = 64 samples" in text


def test_explain_cli_on_a_preset_with_set_and_model(tmp_path: Path) -> None:
    model = tmp_path / "config.json"
    model.write_text(
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
    result = CliRunner().invoke(
        cli,
        [
            "config",
            "explain",
            "zero2",
            "--world-size",
            "2",
            "--micro-batch",
            "4",
            "--model",
            str(model),
            "--set",
            "zero_optimization.allgather_bucket_size=1000",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row = next(line for line in lines if line.startswith("zero_optimization.allgather_bucket_size"))
    assert row.split()[1:] == ["1000", "--set", "zero_optimization.allgather_bucket_size=1000"]
    row = next(line for line in lines if line.startswith("train_micro_batch_size_per_gpu"))
    assert row.endswith("option --micro-batch (filled 'auto')")
    assert "Effective global batch = micro 4 x accum 1 x dp 2 = 8" in result.output
    assert "Memory per GPU:" in result.output


def test_resolve_cli_prints_the_final_json() -> None:
    result = CliRunner().invoke(
        cli,
        [
            "config",
            "resolve",
            "zero1",
            "--world-size",
            "4",
            "--grad-accum",
            "2",
            "--set",
            "steps_per_print=5",
        ],
    )
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.output)
    assert cfg["train_batch_size"] == 8 * 2 * 4
    assert cfg["steps_per_print"] == 5
    assert cfg["zero_optimization"]["stage"] == 1


@pytest.mark.parametrize(
    "name", ["hf_zero2.json", "hf_zero3.json", "old_cpu_offload.json", "old_stage3.json"]
)
def test_users_existing_configs_resolve_unchanged(name: str) -> None:
    path = FIXTURES / name
    raw = json.loads(path.read_text())
    resolved = resolve_deepspeed(str(path), [], RunValues(world_size=2, hidden_size=64))
    cfg = resolved.config
    # What the user wrote explicitly is kept as written.
    for key in ("zero_optimization",):
        for sub, value in raw[key].items():
            if value != "auto":
                assert cfg[key][sub] == value, (name, sub)
    assert '"auto"' not in json.dumps(cfg)


def test_hf_config_autos_are_filled_from_run_options() -> None:
    run = RunValues(world_size=2, micro_batch=4, lr=2e-4, warmup_steps=10, weight_decay=0.1, hidden_size=64)
    resolved = resolve_deepspeed(str(FIXTURES / "hf_zero2.json"), [], run)
    cfg, src = resolved.config, resolved.sources
    assert cfg["optimizer"]["params"] == {
        "lr": 2e-4,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": 0.1,
        "torch_adam": True,
        "adam_w_mode": True,
    }
    assert cfg["scheduler"]["params"]["warmup_num_steps"] == 10
    assert cfg["scheduler"]["params"]["warmup_max_lr"] == 2e-4
    assert src["scheduler.params.warmup_max_lr"] == "derived from the optimizer lr (filled 'auto')"
    assert cfg["train_batch_size"] == 8


def test_old_style_config_keeps_its_precision_and_batch_and_notes_deprecations() -> None:
    resolved = resolve_deepspeed(str(FIXTURES / "old_cpu_offload.json"), [], RunValues(world_size=2))
    assert resolved.run.precision == "fp16"
    assert resolved.run.micro_batch == 8
    assert resolved.config["zero_optimization"]["cpu_offload"] is True
    assert [n.path for n in resolved.notes] == ["zero_optimization.cpu_offload"]


def test_deepspeed_0_19_8_still_accepts_the_old_style_keys() -> None:
    from unittest import mock

    import deepspeed.comm
    from deepspeed.runtime.config import DeepSpeedConfig

    resolved = resolve_deepspeed(str(FIXTURES / "old_stage3.json"), [], RunValues(world_size=2))
    with (
        mock.patch.object(deepspeed.comm, "get_rank", return_value=0),
        mock.patch.object(deepspeed.comm, "get_world_size", return_value=2),
    ):
        ds = DeepSpeedConfig(resolved.config)
    assert ds.zero_config.offload_optimizer.device == "cpu"
    assert ds.zero_config.offload_param.device == "cpu"
    assert ds.zero_config.gather_16bit_weights_on_model_save is True


def test_zero_warmup_becomes_one_step_at_peak_lr() -> None:
    spec = {"train_micro_batch_size_per_gpu": 1, "scheduler": {"type": "WarmupDecayLR", "params": {}}}
    resolved = resolve_deepspeed(spec, [], RunValues(lr=3e-4, warmup_steps=0, total_steps=50))
    params = resolved.config["scheduler"]["params"]
    assert params["warmup_num_steps"] == 1
    assert params["warmup_min_lr"] == params["warmup_max_lr"] == 3e-4


def test_list_and_show_presets() -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["config", "list"])
    assert listed.exit_code == 0
    assert [line.split()[0] for line in listed.output.splitlines()] == PRESETS
    assert "ZeRO++ for multi-node ZeRO-3." in listed.output
    shown = runner.invoke(cli, ["config", "show", "zeropp"])
    assert json.loads(shown.output)["zero_optimization"]["zero_quantized_gradients"] is True
    missing = runner.invoke(cli, ["config", "show", "zero9"])
    assert missing.exit_code == 2
    assert "--ds-config = 'zero9': neither a file nor a preset" in missing.output


@pytest.mark.parametrize("preset", ["zero1", "zero2", "zero3"])
def test_cuda_runs_take_torch_fused_adamw_instead_of_a_jit_build(preset: str) -> None:
    # DeepSpeed 0.19.8's JIT FusedAdam build fails where TORCH_CUDA_ARCH_LIST names "9.0a" (seen on an H200).
    run = RunValues(world_size=8, micro_batch=2, hidden_size=64, cpu_only=False)
    params = resolve_deepspeed(preset, [], run).config["optimizer"]["params"]
    assert params["torch_adam"] is True and params["fused"] is True and params["adam_w_mode"] is True


def test_cuda_offload_keeps_deepspeeds_host_adam_and_explicit_choices_win() -> None:
    run = RunValues(world_size=8, micro_batch=2, hidden_size=64, cpu_only=False)
    offload = resolve_deepspeed("zero2_offload", [], run).config["optimizer"]["params"]
    assert "torch_adam" not in offload
    kept = resolve_deepspeed(
        "zero2", ["optimizer.type=AdamW", "optimizer.params.torch_adam=false"], run
    ).config
    assert kept["optimizer"]["params"]["torch_adam"] is False and "fused" not in kept["optimizer"]["params"]
    cpu = resolve_deepspeed("zero2_offload", [], RunValues(world_size=2, micro_batch=2, hidden_size=64))
    assert cpu.config["optimizer"]["params"]["torch_adam"] is True  # no CUDA: never a 50 s CPU Adam build


def test_sources_cite_no_option_that_the_commands_lack() -> None:
    resolved = resolve_deepspeed({"optimizer": {"type": "AdamW", "params": {}}}, [], RunValues())
    assert "--eps" not in resolved.sources["optimizer.params.eps"]
    assert "no command-line option" in resolved.sources["optimizer.params.eps"]


def test_batch_member_the_file_leaves_out_is_derived_like_deepspeed() -> None:
    # train_batch_size and micro given: DeepSpeed derives accumulation = 64 / (4 x 8) = 2.
    config = {"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4}
    resolved = resolve_deepspeed(config, [], RunValues(world_size=8))
    assert resolved.config["gradient_accumulation_steps"] == 2
    assert resolved.run.grad_accum == 2
    # train_batch_size and accumulation given: micro = 64 / (2 x 8) = 4.
    config = {"train_batch_size": 64, "gradient_accumulation_steps": 2}
    resolved = resolve_deepspeed(config, [], RunValues(world_size=8))
    assert resolved.config["train_micro_batch_size_per_gpu"] == 4
    # only train_batch_size: accumulation 1, micro = 64 / 8.
    resolved = resolve_deepspeed({"train_batch_size": 64}, [], RunValues(world_size=8))
    assert (
        resolved.config["train_micro_batch_size_per_gpu"],
        resolved.config["gradient_accumulation_steps"],
    ) == (8, 1)


def test_batch_contradiction_with_a_typed_option_names_the_option() -> None:
    config = {"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4}
    with pytest.raises(ConfigError) as err:
        resolve_deepspeed(
            config, [], RunValues(world_size=8, grad_accum=3, explicit=frozenset({"grad_accum"}))
        )
    assert "train_batch_size" in str(err.value) and "--world-size" in str(err.value)


def test_auto_in_a_deepspeed_modelled_section_takes_deepspeeds_default() -> None:
    config = {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": "auto"}}
    resolved = resolve_deepspeed(config, [], RunValues())
    assert resolved.config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is False
    assert (
        "DeepSpeed default" in resolved.sources["zero_optimization.stage3_gather_16bit_weights_on_model_save"]
    )


def test_comment_keys_are_noted_once_and_left_out_of_the_resolved_config() -> None:
    config = {"_comment": "x", "zero_optimization": {"stage": 1, "_why": "y"}}
    resolved = resolve_deepspeed(config, [], RunValues())
    assert "_comment" not in resolved.config and "_why" not in resolved.config["zero_optimization"]
    assert sum("comments" in n.render() for n in resolved.notes) == 1


def test_explain_shows_no_default_for_a_key_written_under_its_field_name() -> None:
    config = {"zero_optimization": {"stage": 3, "max_live_parameters": 0}}
    table = rows(resolve_deepspeed(config, [], RunValues()))
    assert not any(r.path == "zero_optimization.stage3_max_live_parameters" for r in table)


def test_old_bfloat16_section_is_read_as_bf16() -> None:
    resolved = resolve_deepspeed({"bfloat16": {"enabled": False}}, [], RunValues())
    assert resolved.config["bf16"] == {"enabled": False} and "bfloat16" not in resolved.config
    assert resolved.run.precision == "fp32"
    assert any("use bf16" in n.render() for n in resolved.notes)
