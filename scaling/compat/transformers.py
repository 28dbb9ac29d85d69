"""transformers internals: building a model from a config, and attention-interface support of a class."""

from __future__ import annotations

from typing import Any


def model_from_config(model_class: Any, config: Any, *, dtype: Any) -> Any:
    """A freshly initialised `model_class` for `config` in `dtype`.

    `PreTrainedModel._from_config` is what the Auto classes' public `from_config` calls; concrete classes
    (`LlamaForCausalLM`, ...) have no public equivalent that applies the dtype and the attention
    implementation the same way.
    """
    return model_class._from_config(config, dtype=dtype)


def causal_lm_class(config: Any) -> Any | None:
    """The causal-LM class transformers maps `config`'s type to, or None when it has none."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return None


def supports_attention_backend(model_class: Any) -> bool:
    """Whether `model_class` routes attention through transformers' `AttentionInterface` (so a registered
    attention function, like our Ulysses one, replaces it). Only the private class flag says so."""
    return bool(getattr(model_class, "_supports_attention_backend", False))
