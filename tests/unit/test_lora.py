"""The LoRA transform on one process: frozen base, adapter-only optimizer groups, adapters_disabled (a DPO
reference), target defaults per family, the trainable share line."""

from __future__ import annotations

import pytest
import torch

from scaling.engine.build import param_groups
from scaling.models.lora import adapters_disabled, apply_lora, is_lora_model, trainable_share
from scaling.models.lora_config import FAMILY_TARGETS, LoraConfig


@pytest.fixture
def adapted(tiny_models):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], local_files_only=True)
    lora = apply_lora(model, LoraConfig(r=4, targets=["q_proj,v_proj"]), seed=0)
    with torch.no_grad():  # trained adapters: B is zero at init, which would make the test vacuous
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return lora.eval()


def test_only_adapters_require_grads_and_reach_the_optimizer(adapted):
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}
    grouped = {id(p) for group in param_groups(adapted, 0.1) for p in group["params"]}
    assert grouped == {id(p) for p in adapted.parameters() if p.requires_grad}


def test_adapters_disabled_computes_the_frozen_base_through_a_wrapper(adapted, tiny_models):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], local_files_only=True).eval()
    ids = torch.arange(16).view(1, 16)

    class Engine(torch.nn.Module):  # what DeepSpeed's engine looks like from outside: the model as .module
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **kw):
            return self.module(**kw)

    engine = Engine(adapted)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        adapted_logits = engine(input_ids=ids).logits
        with adapters_disabled(engine):
            reference = engine(input_ids=ids).logits
        after = engine(input_ids=ids).logits
    assert torch.allclose(reference, base_logits, atol=1e-6)
    assert (adapted_logits - base_logits).abs().max() > 1e-3
    assert torch.equal(after, adapted_logits)  # switched back on when the block ends
    assert is_lora_model(engine) and not is_lora_model(base)
    with pytest.raises(TypeError, match="no LoRA adapters"), adapters_disabled(base):
        pass


def test_trainable_share_line(adapted):
    # q 64x64 and v 64x32 in 2 layers, r 4: 2 x 4 x (128 + 96) = 1,792 adapter parameters
    assert trainable_share(adapted) == "trainable 0.88% (1,792 / 203.8K)"


def test_targets_default_to_the_family_projections_and_split_on_commas():
    assert LoraConfig(r=8).target_names("llama") == list(FAMILY_TARGETS["llama"])
    assert LoraConfig(r=8).target_names("gpt2") == ["c_attn", "c_proj", "c_fc"]
    assert LoraConfig(r=8).target_names("some_new_family") == ["all-linear"]
    assert LoraConfig(r=8, targets=["q_proj, v_proj", "o_proj"]).target_names("llama") == [
        "q_proj",
        "v_proj",
        "o_proj",
    ]


def test_gpt2_conv1d_adapters_export_merged_and_as_peft_directory(tiny_models, tmp_path):
    """GPT-2's projections are transformers Conv1D (weight stored transposed): the export's merge must agree
    with PEFT applying the saved adapter over the base."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    from scaling.models.lora import merged_model

    source = tiny_models["gpt2"]
    lora = LoraConfig(r=4, alpha=8)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(source), lora, seed=0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    state = model.state_dict()  # what a checkpoint's consolidated weights hold, names included
    run = {"model": {"source": str(source), "task": "clm"}, "lora": vars(lora)}
    merged = merged_model(run, AutoConfig.from_pretrained(source), state, tmp_path / "adapter").eval()
    ids = torch.arange(16).view(1, 16)
    with torch.no_grad():
        expected = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(source), tmp_path / "adapter"
        )
        want = expected.eval()(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(source).eval()(input_ids=ids).logits
    assert type(merged).__name__ == "GPT2LMHeadModel"
    assert (got - want).abs().max() < 1e-5 and (got - base).abs().max() > 1e-3
