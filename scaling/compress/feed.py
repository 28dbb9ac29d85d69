"""Turning documents into model inputs, and running a model of any of our formats on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scaling.compress.data import Documents
from scaling.errors import DataError


@dataclass
class Batch:
    """One batch of token ids; `labels` only for seq-cls."""

    input_ids: Any
    """LongTensor [batch, seq]."""
    attention_mask: Any
    """LongTensor [batch, seq]; all ones for packed blocks."""
    labels: Any = None
    """LongTensor [batch] of class ids (seq-cls), else None."""


def lm_blocks(docs: Documents, tokenizer: Any, seq_len: int, max_blocks: int | None = None) -> Any:
    """Concatenate documents (EOS/SEP between them) into full blocks of `seq_len` tokens: [n, seq_len]."""
    import torch

    if tokenizer is None:
        raise DataError("the model directory has no tokenizer; one is needed to read text data")
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    ids: list[int] = []
    need = None if max_blocks is None else max_blocks * seq_len
    for text in docs.texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if sep is not None:
            ids.append(sep)
        if need is not None and len(ids) >= need:
            break
    n = len(ids) // seq_len
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n == 0:
        raise DataError(f"{docs.spec}: only {len(ids)} tokens, fewer than one block of {seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def block_batches(blocks: Any, batch_size: int) -> list[Batch]:
    import torch

    return [Batch(b, torch.ones_like(b)) for b in blocks.split(batch_size)]


def cls_batches(docs: Documents, tokenizer: Any, seq_len: int, batch_size: int) -> list[Batch]:
    """Padded batches of single documents with their labels, for sequence classification."""
    import torch

    if docs.labels is None:
        raise DataError(f"{docs.spec}: seq-cls needs labels (see --label-column)")
    out = []
    for start in range(0, len(docs.texts), batch_size):
        enc = tokenizer(
            docs.texts[start : start + batch_size],
            truncation=True,
            max_length=seq_len,
            padding=True,
            return_tensors="pt",
        )
        labels = torch.tensor(docs.labels[start : start + batch_size], dtype=torch.long)
        out.append(Batch(enc["input_ids"], enc["attention_mask"], labels))
    return out


def calibration_batches(
    docs: Documents, tokenizer: Any, task: str, seq_len: int, samples: int, batch_size: int = 4
) -> list[Batch]:
    """`samples` sequences of `seq_len` tokens (packed for LMs, padded documents for seq-cls)."""
    if task == "seq-cls":
        return cls_batches(
            Documents(docs.texts[:samples], [0] * min(samples, len(docs.texts)), docs.spec),
            tokenizer,
            seq_len,
            batch_size,
        )
    return block_batches(lm_blocks(docs, tokenizer, seq_len, samples), batch_size)


def main_output(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """The tensor that matters: logits for heads, last_hidden_state for bare encoders; tensors pass through."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        kwargs = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}
        out = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    else:
        # Exported graphs (PT2E) and our TensorOut wrapper take positional inputs only.
        out = model(input_ids, attention_mask)
    if hasattr(out, "logits"):
        return out.logits
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, tuple | list):
        return out[0]
    return out


class TensorOut:
    """Factory of a module wrapping an HF model as forward(input_ids, attention_mask) -> one tensor.

    torch.export and PT2E need a single-tensor output and positional inputs.
    """

    @staticmethod
    def wrap(model: Any) -> Any:
        import torch

        class _TensorOut(torch.nn.Module):
            def __init__(self, inner: Any):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                return main_output(self.inner, input_ids, attention_mask)

        return _TensorOut(model).eval()
