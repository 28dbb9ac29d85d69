"""Streaming input pipeline: sources -> tokenize -> augment -> pack -> mix -> shard, each stage resumable.

The engine uses only what this module exports:

- `build_tokenizer(model_source, tokenizer, data, task, vocab_size, save_dir)`: an HF tokenizer.
- `build_train_stream(data, tokenizer, task=, micro_batch=, dp_rank=, dp_size=, seed=)`: an endless iterator of
  micro-batches (dicts of tensors: `input_ids`, `attention_mask`, `labels`, optionally `position_ids`), with
  `state_dict()`/`load_state_dict()`, `epoch`, `metrics()` and `steps_per_epoch(grad_accum)`.
- `build_eval_batches(data, tokenizer, task=, micro_batch=, dp_rank=, dp_size=, max_batches=)`: a finite list.
"""

from scaling.data.config import DataConfig

__all__ = ["DataConfig"]
