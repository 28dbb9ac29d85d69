"""Reload checks: every output stores a few inputs and the outputs the in-memory model gave on them before
saving; `verify_reload(dir)` reloads the directory (typically in a fresh process) and compares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scaling.compress.feed import main_output

CHECK_FILE = "reload_check.safetensors"
KEEP_POSITIONS = 8
KEEP_FEATURES = 256
"""Stored slice of the outputs (a full vocabulary of logits would rival a tiny model in size)."""


def _slice(out: Any) -> Any:
    if out.dim() == 2:  # classifier logits: [batch, classes]
        return out[:2, :KEEP_FEATURES].contiguous().float()
    return out[:2, :KEEP_POSITIONS, :KEEP_FEATURES].contiguous().float()


def record(model: Any, input_ids: Any, attention_mask: Any, directory: Path) -> None:
    import torch
    from safetensors.torch import save_file

    ids, mask = input_ids[:2].contiguous(), attention_mask[:2].contiguous()
    with torch.no_grad():
        out = main_output(model, ids, mask)
    save_file(
        {
            "input_ids": ids,
            "attention_mask": mask,
            "output": _slice(out),
            "argmax": out.argmax(-1).contiguous(),
        },
        str(Path(directory) / CHECK_FILE),
    )


def verify_reload(directory: str | Path) -> dict[str, float]:
    """Reload with load_compressed and compare with the recorded outputs: max |diff| and argmax agreement."""
    import torch
    from safetensors.torch import load_file

    from scaling.compress.model_io import load_compressed

    ref = load_file(str(Path(directory) / CHECK_FILE))
    loaded = load_compressed(directory)
    with torch.no_grad():
        out = main_output(loaded.model, ref["input_ids"], ref["attention_mask"])
    return {
        "max_abs_diff": float((_slice(out) - ref["output"]).abs().max()),
        "argmax_agreement": float((out.argmax(-1) == ref["argmax"]).float().mean()),
    }
