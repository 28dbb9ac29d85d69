"""LoRA's refusals before launch (exit 2, one message, nothing written) and `scaling estimate --lora-r`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from scaling.cli.main import cli

ADAPTERS = 8_192  # tiny Llama, r 4, the 7 default projections of 2 layers
BASE = 202_048


def _train(tmp_path, model, *extra, data=None):
    if data is None:
        data = tmp_path / "text.txt"
        data.write_text("some text to train on\n" * 50)
    args = ["train", "--model", str(model), "--data", str(data), "--output", str(tmp_path / "run"),
            "--max-steps", "1", "--seq-len", "16", "--micro-batch", "1", "--no-progress", "--lora-r", "4", *extra]  # fmt: skip
    return CliRunner().invoke(cli, args)


def _refused(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.count("Error") == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_targets_that_match_no_module_are_named_with_module_examples(tmp_path, tiny_models):
    result = _train(tmp_path, tiny_models["llama"], "--lora-targets", "qkv,attn_out")
    _refused(
        result, "--lora-targets", "qkv, attn_out match no module of this llama model", "q_proj", "down_proj"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_targets_that_are_not_layers_are_refused(tmp_path, tiny_models):
    result = _train(tmp_path, tiny_models["llama"], "--lora-targets", "self_attn")
    _refused(result, "LoRA cannot adapt", "LlamaAttention", "q_proj")


def test_lora_needs_pretrained_weights(tmp_path):
    _refused(_train(tmp_path, "tiny-llama"), "--lora-r", "LoRA adapts pretrained weights")


@pytest.mark.skipif(
    __import__("scaling.config.device", fromlist=["cuda_available"]).cuda_available(),
    reason="a GPU is present",
)
def test_qlora_is_refused_on_cpu_with_the_reason(tmp_path, tiny_models):
    _refused(_train(tmp_path, tiny_models["llama"], "--lora-4bit"), "--lora-4bit", "QLoRA needs CUDA")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_chat_tokens_the_frozen_embeddings_lack_are_refused(tmp_path, tiny_models):
    data = tmp_path / "chat.jsonl"
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    data.write_text(json.dumps(record) + "\n")
    result = _train(tmp_path, tiny_models["llama"], "--task", "sft", "--chat-template", "chatml", data=data)
    _refused(result, "would stay untrained under LoRA", "<|im_start|>")


def test_train_help_shows_lora_options():
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert result.exit_code == 0
    for flag in ("--lora-r", "--lora-alpha", "--lora-dropout", "--lora-targets", "--lora-4bit"):
        assert flag in result.output


def test_estimate_counts_adapter_states_and_a_16_bit_frozen_base(tiny_models):
    def figures(*extra):
        args = ["estimate", "--model", str(tiny_models["llama"]), "--gpus-per-node", "2", "--ds-config", "zero2",
                "--json", *extra]  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    full, lora = figures(), figures("--lora-r", "4")
    assert (full["model"]["params"], full["model"]["frozen"]) == (BASE, 0)
    assert (lora["model"]["params"], lora["model"]["frozen"]) == (ADAPTERS, BASE)
    stage2 = lora["configured"]
    assert (
        stage2["gpu_optimizer"] == 12 * ADAPTERS // 2
    )  # fp32 master + Adam moments of the adapters, over dp 2
    assert stage2["gpu_grads"] == 2 * ADAPTERS // 2
    assert stage2["gpu_params"] == 2 * ADAPTERS + 2 * BASE  # the frozen base in bf16, whole at stage 2
    zero3 = lora["stages"][3]  # the plain ZeRO-3 row (stages 0-3, then the offload variants)
    assert zero3["gpu_params"] == 2 * ADAPTERS // 2 + 2 * BASE // 2
    assert full["configured"]["gpu_optimizer"] == 12 * BASE // 2
    four_bit = figures("--lora-r", "4", "--lora-4bit")["configured"]
    assert four_bit["gpu_params"] == 2 * ADAPTERS + BASE // 2


def test_launch_takes_the_lora_options_and_checks_them_before_starting(tmp_path, tiny_models):
    (tmp_path / "text.txt").write_text("some text to train on\n" * 50)
    job = ["train", "--model", str(tiny_models["llama"]), "--data", str(tmp_path / "text.txt"),
           "--output", str(tmp_path / "run"), "--max-steps", "1", "--lora-r", "4"]  # fmt: skip
    launch = ["launch", "--num-gpus", "2", "--dry-run", "--"]
    bad = CliRunner().invoke(cli, [*launch, *job, "--lora-targets", "nope"])
    _refused(bad, "nope match no module")
    good = CliRunner().invoke(cli, [*launch, *job, "--lora-targets", "q_proj"])
    assert good.exit_code == 0, good.output
