"""Streaming input pipeline: sources -> tokenize -> augment -> pack -> mix -> shard, each stage resumable.

The engine uses only what this module exports:

- `build_tokenizer(model_source, tokenizer, data, task, vocab_size, save_dir)`: an HF tokenizer.
- `build_train_stream(data, tokenizer, task=, micro_batch=, dp_rank=, dp_size=, seed=)`: an endless iterator of
  micro-batches (dicts of tensors: `input_ids`, `attention_mask`, `labels`, optionally `position_ids`), with
  `state_dict()`/`load_state_dict()`, `epoch`, `metrics()`, `steps_per_epoch(grad_accum)` and `maybe_adapt`.
  Packed clm/mlm batches without cross-document attention carry `position_ids` and no `attention_mask`:
  HF models then derive the block-diagonal causal mask from the restarting positions (causal LMs, and only
  when called with `use_cache=False`, as in training; with a cache HF skips that detection).
- `build_eval_batches(data, tokenizer, task=, micro_batch=, dp_rank=, dp_size=, max_batches=)`: a finite list,
  the same length on every rank.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from scaling.data.config import DataConfig

if TYPE_CHECKING:
    from scaling.data.shards import preprocess
    from scaling.data.stream import TrainStream, build_eval_batches, build_train_stream
    from scaling.data.tokenizer import (
        build_tokenizer,
        load_tokenizer,
        tokenizer_fingerprint,
        train_sentencepiece,
    )

# Imported on first use: `scaling.data.config` (the section every CLI command reads) must not cost torch.
_LAZY = {
    "preprocess": "scaling.data.shards",
    "TrainStream": "scaling.data.stream",
    "build_eval_batches": "scaling.data.stream",
    "build_train_stream": "scaling.data.stream",
    "build_tokenizer": "scaling.data.tokenizer",
    "load_tokenizer": "scaling.data.tokenizer",
    "tokenizer_fingerprint": "scaling.data.tokenizer",
    "train_sentencepiece": "scaling.data.tokenizer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'scaling.data' has no attribute {name!r}")


__all__ = [
    "DataConfig",
    "TrainStream",
    "build_eval_batches",
    "build_tokenizer",
    "build_train_stream",
    "load_tokenizer",
    "preprocess",
    "tokenizer_fingerprint",
    "train_sentencepiece",
]
