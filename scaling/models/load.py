"""Turn `--model` into an HF config and a model for a task, without touching the network."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaling.errors import ConfigError, Problem
from scaling.models.presets import PRESETS, preset_names

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from scaling.models.transplant import TransplantPlan

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class ModelSource:
    """What `--model` names: a preset, a config file, or a directory with or without weights."""

    kind: str
    """preset | config | pretrained | config-dir"""
    location: str
    """The preset name or the filesystem path."""

    @property
    def has_weights(self) -> bool:
        return self.kind == "pretrained"

    @property
    def directory(self) -> Path | None:
        return Path(self.location) if self.kind in ("pretrained", "config-dir") else None


def describe_source(source: str) -> ModelSource:
    """Classify `--model`; a name that is none of the accepted forms is a ConfigError naming the options."""
    if source in PRESETS:
        return ModelSource("preset", source)
    path = Path(source)
    if path.is_file():
        if path.suffix != ".json":
            raise ConfigError([Problem("--model", "a file must be an HF config.json", source)])
        return ModelSource("config", str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                [Problem("--model", "directory has no config.json (not an HF model directory)", source)]
            )
        has_weights = any((path / name).exists() for name in WEIGHT_FILES)
        return ModelSource("pretrained" if has_weights else "config-dir", str(path))
    raise ConfigError(
        [
            Problem(
                "--model",
                "no such directory, config file or preset",
                source,
                fix=f"presets: {', '.join(preset_names())}",
            )
        ]
    )


def hf_config_for(source: ModelSource) -> PretrainedConfig:
    from transformers import CONFIG_MAPPING, AutoConfig

    if source.kind == "preset":
        spec = dict(PRESETS[source.location])
        return CONFIG_MAPPING[spec.pop("model_type")](**spec)
    if source.kind == "config":
        try:
            spec = json.loads(Path(source.location).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(
                [
                    Problem(
                        source.location, f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
                    )
                ]
            ) from None
        model_type = spec.pop("model_type", None)
        if model_type not in CONFIG_MAPPING:
            raise ConfigError(
                [Problem(f"{source.location}: model_type", "unknown or missing model_type", model_type)]
            )
        return CONFIG_MAPPING[model_type](**spec)
    return AutoConfig.from_pretrained(source.location, local_files_only=True)


def model_class_for(task: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification

    return {
        "clm": AutoModelForCausalLM,
        "sft": AutoModelForCausalLM,
        "dpo": AutoModelForCausalLM,
        "mlm": AutoModelForMaskedLM,
        "seq-cls": AutoModelForSequenceClassification,
    }[task]


def hidden_size_of(config: PretrainedConfig) -> int | None:
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def build_model(
    source: ModelSource,
    *,
    task: str,
    tokenizer: PreTrainedTokenizerBase,
    num_labels: int = 2,
    dtype: torch.dtype | None = None,
    quantization: Any = None,
    transplant: TransplantPlan | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """Load (weights) or initialise (config/preset) an HF model for `task`, sized to the tokenizer;
    `quantization` (a transformers quantization config, QLoRA's 4-bit base) applies to loaded weights.

    The caller seeds torch beforehand, so random initialisation is identical on every rank. `transplant`
    moves pretrained weights to the tokenizer's vocabulary (scaling.models.transplant).
    """
    import torch

    config = hf_config_for(source)
    _align_special_tokens(config, tokenizer)
    if task == "seq-cls":
        config.num_labels = num_labels
    cls = model_class_for(task)
    if source.has_weights:
        extra: dict[str, Any] = {}
        if quantization is not None:  # quantized on the way to this rank's GPU (set when the group started)
            extra = {"quantization_config": quantization, "device_map": {"": torch.cuda.current_device()}}
        model = cls.from_pretrained(
            source.location, config=config, local_files_only=True, dtype=dtype or torch.float32, **extra
        )
    else:
        config.vocab_size = len(tokenizer)
        model = cls.from_config(config, dtype=dtype or torch.float32)
    if transplant is not None and source.has_weights:
        from scaling.models.transplant import apply_transplant

        apply_transplant(model, transplant, seed=seed)
    elif model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # training never reuses past key/values; caching only costs memory
    if task in ("clm", "sft", "dpo") and getattr(model, "loss_type", None) is None:
        # transformers infers the loss from the class name; GPT2LMHeadModel matches none and warns on every
        # run before falling back to this same causal-LM loss.
        model.loss_type = "ForCausalLM"
    return model


def _align_special_tokens(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            setattr(config, name, value)
