"""Tiny architectures for tests and demos: real HF classes, a few hundred thousand parameters."""

from __future__ import annotations

from typing import Any

# Sizes are kept small enough for 2 CPU ranks, but with >1 head and >1 layer so attention masks, pipeline
# splits and tensor-parallel slicing are all exercised. The vocabulary is filled in from the tokenizer.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-gpt2": {
        "model_type": "gpt2",
        "n_layer": 2,
        "n_embd": 64,
        "n_head": 4,
        "n_positions": 512,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "tie_word_embeddings": True,
    },
    "tiny-llama": {
        "model_type": "llama",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
    "tiny-bert": {
        "model_type": "bert",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    },
}


def preset_names() -> list[str]:
    return sorted(PRESETS)
