"""Compression of finished models: quantize (Intel Neural Compressor), prune, evaluate, report, pipeline.

Importing this package is cheap; torch, transformers and neural_compressor load only when a function runs.
Distillation plugs in as `scaling.compress.distill.run_distillation` (see `pipeline.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from scaling.compress.model_io import LoadedModel

__all__ = ["load_compressed"]


def load_compressed(path: str | Path, **kwargs: Any) -> LoadedModel:
    """Reload any output of `scaling compress` (quantized, pruned, distilled) or a plain HF model directory."""
    from scaling.compress.model_io import load_compressed as _load

    return _load(path, **kwargs)
