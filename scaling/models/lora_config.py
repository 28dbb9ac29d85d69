"""LoRA's options: low-rank adapters trained over a frozen base model (a model transform, see
scaling.models.lora). Torch-free, so the CLI can generate the options without importing the model code."""

from __future__ import annotations

from dataclasses import dataclass

from scaling.config.fields import option

ALL_LINEAR = "all-linear"
"""PEFT's name for every linear layer except the output head."""

_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_NEOX_LIKE = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
FAMILY_TARGETS: dict[str, tuple[str, ...]] = {
    **{
        family: _LLAMA_LIKE
        for family in (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
        )
    },
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_bigcode": ("c_attn", "c_proj", "c_fc"),
    "gpt_neox": _NEOX_LIKE,
    "bloom": _NEOX_LIKE,
    "falcon": _NEOX_LIKE,
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
}
"""The attention and MLP projections of each model family (model_type); other families get all-linear."""


@dataclass(kw_only=True)
class LoraConfig:
    """LoRA: train low-rank adapters on the attention and MLP projections, keep the base model frozen."""

    r: int = option(0, flag="--lora-r", param="lora_r", min=0)
    """LoRA rank: train rank-r adapters over the frozen base model instead of all its weights (0: full
    fine-tuning). Needs --model with pretrained weights."""
    alpha: int = option(16, flag="--lora-alpha", param="lora_alpha", min=1)
    """Adapter scale: each update is scaled by alpha / r."""
    dropout: float = option(0.0, flag="--lora-dropout", param="lora_dropout", min=0, max=1, max_open=True)
    """Dropout on the adapters' input."""
    targets: list[str] = option(
        default_factory=list, flag="--lora-targets", param="lora_targets", metavar="NAMES"
    )
    """Modules that get adapters: names or name suffixes, comma-separated or repeated, or all-linear (default:
    the family's attention and MLP projections, e.g. q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj for
    Llama, c_attn,c_proj,c_fc for GPT-2)."""
    four_bit: bool = option(False, flag="--lora-4bit", param="lora_4bit")
    """QLoRA: hold the frozen base in 4 bits (NF4, bitsandbytes; CUDA only)."""

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def target_names(self, model_type: str) -> list[str]:
        """The targets asked for (commas split), or the family's default; ['all-linear'] for PEFT's choice."""
        names = [name.strip() for value in self.targets for name in value.split(",") if name.strip()]
        return names or list(FAMILY_TARGETS.get(model_type, (ALL_LINEAR,)))


def matches(module_name: str, targets: list[str]) -> bool:
    """PEFT's rule for a list of targets: the module's full name, or its last dotted components."""
    return any(module_name == t or module_name.endswith("." + t) for t in targets)
