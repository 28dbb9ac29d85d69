"""LoRA end to end on 2 gloo ranks: ZeRO-3 resume is bit-exact, only adapters reach the optimizer, the merged
export equals base + adapter, the adapter directory loads with PEFT; ZeRO 0/1/2 train and export too."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from harness import run_ranks
from ranks import train_cli

from scaling.cli.main import cli

N = 3
R = 4
ADAPTERS = 8_192  # tiny Llama: 2 layers x r 4 x (q 64+64, k 64+32, v 64+32, o 64+64, gate/up/down 64+128)


@pytest.fixture(scope="module")
def base(tiny_models):
    return tiny_models["llama"]


def args_for(out, corpus, base, ds_config, max_steps, *extra):
    return [
        "--model", str(base), "--data", str(corpus), "--output", str(out), "--ds-config", ds_config,
        "--precision", "bf16", "--seq-len", "32", "--micro-batch", "2", "--grad-accum", "2", "--lr", "1e-2",
        "--max-steps", str(max_steps), "--log-every", "1", "--save-every", str(N), "--no-progress",
        "--no-tensorboard", "--lora-r", str(R), "--lora-dropout", "0.1", *extra,
    ]  # fmt: skip


def losses(result):
    return {r["step"]: r["loss_hex"] for r in result["records"] if "loss_hex" in r}


def optimized_names(step_dir):
    """The parameter names DeepSpeed's optimizer holds (param_shapes of the saved model states; ZeRO 1-3)."""
    file = step_dir / "mp_rank_00_model_states.pt"  # ZeRO-1/2: rank 0's; ZeRO-3: one per rank
    if not file.is_file():
        file = step_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    return [name for group in torch.load(file, weights_only=False)["param_shapes"] for name in group]


def stage0_master_numel(step_dir):
    """Elements of the fp32 master copy a stage-0 bf16 optimizer keeps (one per optimized parameter)."""
    state = torch.load(step_dir / "mp_rank_00_model_states.pt", weights_only=False)
    return sum(t.numel() for group in state["optimizer"]["fp32_groups"] for t in group)


def logits_of(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_zero3_resume_export_and_peft(tmp_path, small_corpus, base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    straight = run_ranks(train_cli, 2, args_for(tmp_path / "a", small_corpus, base, "zero3", 2 * N))[0]
    assert straight["exit"] == 0, straight["message"]
    first = run_ranks(
        train_cli, 2,
        args_for(tmp_path / "b", small_corpus, base, "zero3", 2 * N, "--halt-at-step", str(N), "--no-export"),
    )[0]  # fmt: skip
    second = run_ranks(
        train_cli, 2, args_for(tmp_path / "b", small_corpus, base, "zero3", 2 * N, "--resume", "auto")
    )[0]
    assert first["exit"] == 0 and second["exit"] == 0, (first["message"], second["message"])
    full, resumed = losses(straight), losses(second)
    assert sorted(full) == list(range(1, 2 * N + 1))
    assert {s: full[s] for s in range(1, N + 1)} == losses(first)
    assert {s: full[s] for s in range(N + 1, 2 * N + 1)} == {s: resumed[s] for s in range(N + 1, 2 * N + 1)}

    run = tmp_path / "a"
    log = (run / "logs" / "rank-0.log").read_text()
    assert f"LoRA r={R}: trainable 3.90% ({ADAPTERS:,} / 210.2K)" in log

    names = optimized_names(run / "checkpoints" / f"step-{2 * N:08d}")
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names), names
    assert len(names) == 2 * 2 * 7  # A and B of 7 projections in 2 layers

    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    merged = AutoModelForCausalLM.from_pretrained(run / "final", local_files_only=True)
    plain = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    base_logits = logits_of(plain, ids)
    adapted = PeftModel.from_pretrained(plain, run / "adapter")
    adapted_logits = logits_of(adapted, ids)
    merged_logits = logits_of(merged, ids)
    assert (merged_logits - adapted_logits).abs().max() < 1e-5
    assert (adapted_logits - base_logits).abs().max() > 1e-3  # the adapters were trained, not saved empty
    # The resumed run exported the same adapters: resume restored them exactly.
    again = logits_of(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "b" / "adapter"), ids
    )
    assert torch.equal(again, adapted_logits)
    # The merged export carries the tokenizer: a plain transformers model the compression commands take.
    assert (run / "final" / "tokenizer.json").is_file()
    report = tmp_path / "eval.json"
    result = CliRunner().invoke(cli, ["compress", "evaluate", str(run / "final"), "--data", "builtin:pydoc",
                                      "--seq-len", "32", "--max-samples", "4", "--no-speed", "--json", str(report)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert 1 < json.loads(report.read_text())["perplexity"] < 1e4


def test_lora_checkpoint_reshapes_to_another_world_size(tmp_path, small_corpus, base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    halted = run_ranks(
        train_cli, 2,
        args_for(tmp_path / "a", small_corpus, base, "zero3", 2 * N, "--halt-at-step", str(N), "--no-export"),
    )[0]  # fmt: skip
    assert halted["exit"] == 0, halted["message"]
    reshaped = tmp_path / "reshaped"
    result = CliRunner().invoke(
        cli,
        ["checkpoint", "reshape", str(tmp_path / "a" / "checkpoints" / f"step-{N:08d}"), "--output", str(reshaped),
         "--world-size", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    resumed = run_ranks(
        train_cli, 1, args_for(tmp_path / "b", small_corpus, base, "zero3", N + 1, "--resume", str(reshaped))
    )[0]
    assert resumed["exit"] == 0, resumed["message"]
    assert sorted(losses(resumed)) == [N + 1]
    ids = torch.arange(24).view(1, 24)
    merged = logits_of(AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "final"), ids)
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base), tmp_path / "b" / "adapter"
    )
    assert (merged - logits_of(adapted, ids)).abs().max() < 1e-5


@pytest.mark.parametrize("ds_config", ["zero0", "zero1", "zero2"])
def test_lora_zero_stages_train_and_export(tmp_path, small_corpus, base, ds_config):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    result = run_ranks(train_cli, 2, args_for(out, small_corpus, base, ds_config, 2, "--save-every", "0"))[0]
    assert result["exit"] == 0, result["message"]
    step_dir = out / "checkpoints" / "step-00000002"
    if ds_config == "zero0":
        assert stage0_master_numel(step_dir) == ADAPTERS
    else:
        names = optimized_names(step_dir)
        assert len(names) == 28 and all(".lora_" in n for n in names), names
    ids = torch.arange(24).view(1, 24)
    merged = logits_of(AutoModelForCausalLM.from_pretrained(out / "final"), ids)
    adapted = logits_of(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "adapter"), ids
    )
    assert (merged - adapted).abs().max() < 1e-5
