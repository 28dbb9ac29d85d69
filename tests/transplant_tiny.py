"""A pretrained tiny Llama moved to another tokenizer: the embedding-transplant acceptance experiment.

A Llama is trained on tinyshakespeare with tokenizer A; tokenizer B is trained on other text (SST-2
sentences). The model moves to B with transplanted or random rows; held-out shakespeare perplexity is
measured right after the move, then both arms train on with B and the steps to a target loss are counted.
Used by tests/unit/test_transplant.py and `python -m bench embedding_transplant`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shakespeare(lines: slice) -> list[str]:
    return [t for t in (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines()[lines] if t]


def sst2(split: str, limit: int | None = None) -> list[str]:
    rows = (SHARED / "sst2" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [r.split("\t")[0].strip() for r in rows[:limit]]


def blocks(tok: Any, texts: list[str], seq_len: int) -> Any:
    import torch

    ids: list[int] = []
    for row in tok(texts, add_special_tokens=False)["input_ids"]:
        ids += [*row, tok.eos_token_id]
    return torch.tensor(ids[: len(ids) // seq_len * seq_len]).view(-1, seq_len)


def perplexity(model: Any, data: Any, batch: int = 16) -> float:
    import torch

    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for start in range(0, len(data), batch):
            b = data[start : start + batch]
            total += float(model(input_ids=b, labels=b).loss) * b.numel()
            count += b.numel()
    return math.exp(total / count)


def train(
    model: Any,
    data: Any,
    steps: int,
    *,
    lr: float = 3e-3,
    batch: int = 16,
    seed: int = 0,
    target: float = 0.0,
) -> list[float]:
    """AdamW steps on random rows of `data`; the loss of each step (stops early once below `target`)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        b = data[torch.randint(0, len(data), (batch,), generator=gen)]
        loss = model(input_ids=b, labels=b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if target and _smoothed(losses) <= target:
            break
    return losses


def _smoothed(losses: list[float], window: int = 5) -> float:
    tail = losses[-window:]
    return sum(tail) / len(tail) if len(tail) == window else math.inf


def steps_to(losses: list[float], target: float, window: int = 5) -> int | None:
    """First step whose mean loss over the last `window` steps is at most `target`."""
    for n in range(window, len(losses) + 1):
        if sum(losses[n - window : n]) / window <= target:
            return n
    return None


def pretrained(out: Path, *, vocab: int = 800, steps: int = 300, seq_len: int = 64) -> Path:
    """A tiny Llama trained on the first 20,000 lines of tinyshakespeare with its own tokenizer, saved."""
    import torch
    import transformers as tf

    from scaling.data.tokenizer import train_sentencepiece

    if (out / "config.json").is_file():
        return out
    train_text = shakespeare(slice(0, 20000))
    tok = train_sentencepiece(train_text, out, vocab_size=vocab, model_type="bpe")
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(
        tf.LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=False,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    train(model, blocks(tok, train_text, seq_len), steps)
    model.save_pretrained(str(out))
    return out


def other_tokenizer(out: Path, *, vocab: int = 800) -> Any:
    """Tokenizer B: trained on SST-2 movie-review sentences, not on shakespeare."""
    from scaling.data.tokenizer import load_tokenizer, train_sentencepiece

    if not (out / "tokenizer.json").is_file():
        train_sentencepiece(sst2("train", 20000), out, vocab_size=vocab, model_type="bpe")
    return load_tokenizer(out)
