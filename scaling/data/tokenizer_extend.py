"""Grow an existing tokenizer with the pieces a domain corpus needs most (`scaling tokenizer extend`)."""

from __future__ import annotations

import tempfile
from collections import Counter
from typing import Any

from scaling.errors import DataError


def most_useful_tokens(tokenizer: Any, texts: list[str], add: int) -> list[str]:
    """The `add` strings that save the most tokens on `texts`: candidates are the pieces of a tokenizer
    trained on the texts; a candidate's worth is how often it occurs there times the tokens it saves (the
    pieces the existing tokenizer needs for it, minus one). Strings the tokenizer already has are skipped."""
    from scaling.data.tokenizer import train_sentencepiece

    if not texts:
        raise DataError("tokenizer extend read no text: the sources are empty")
    with tempfile.TemporaryDirectory() as tmp:
        domain = train_sentencepiece(texts, tmp, vocab_size=max(1000, 2 * add + 400), model_type="bpe")
    counts: Counter[int] = Counter()
    for ids in domain(texts, add_special_tokens=False)["input_ids"]:
        counts.update(ids)
    specials = set(domain.all_special_ids)
    candidates = {
        domain.convert_tokens_to_string([domain.convert_ids_to_tokens(i)]): n
        for i, n in counts.items()
        if i not in specials
    }
    known = set(tokenizer.get_vocab())
    texts_of = [t for t in candidates if t and "\ufffd" not in t]
    worth = []
    for text, ids in zip(texts_of, tokenizer(texts_of, add_special_tokens=False)["input_ids"], strict=True):
        if len(ids) > 1 and text not in known:
            worth.append((candidates[text] * (len(ids) - 1), text))
    worth.sort(key=lambda w: (-w[0], w[1]))
    return [text for _, text in worth[:add]]


def extend_tokenizer(tokenizer: Any, tokens: list[str]) -> Any:
    """`tokenizer` with `tokens` added as plain (non-special) tokens matched on the raw text."""
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in tokens])
    return tokenizer
