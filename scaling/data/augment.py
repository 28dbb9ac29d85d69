"""On-the-fly augmentation: word-level EDA ops on text, and token masking strategies for mlm.

Text ops draw from a generator seeded by (seed, source, epoch, record index), so a record gets the same
augmentation whatever rank, chunk or resume point it is read at, and no RNG state needs saving.
Masking draws from a generator seeded by (seed, rank, batch index), likewise stateless.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scaling.errors import ConfigError, DataError, Problem

TEXT_OPS = ("delete", "swap", "insert", "synonym")
MASK_OPS = ("wwm", "span")
SPAN_MEAN_LENGTH = 3.0
SPAN_MAX_LENGTH = 10


@dataclass(frozen=True)
class AugmentPlan:
    """The parsed `--augment` string."""

    text_ops: tuple[tuple[str, float], ...] = ()
    """Word-level ops in the order given, each with its rate."""
    mask_op: tuple[str, float] | None = None
    """mlm masking strategy replacing token-level masking: wwm or span, with the share of tokens to mask."""
    synonyms: dict[str, list[str]] = field(default_factory=dict)
    """Synonym table for synonym replacement and insertion."""

    @property
    def active(self) -> bool:
        return bool(self.text_ops)


def parse_augment(spec: str, synonyms_path: str | None, *, task: str) -> AugmentPlan:
    text_ops: list[tuple[str, float]] = []
    mask_op = None
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, rate_text = item.partition(":")
        try:
            rate = float(rate_text) if rate_text else 0.1
        except ValueError:
            raise ConfigError([Problem("--augment", f"rate of {name!r} is not a number", item)]) from None
        if not 0.0 <= rate <= 1.0:
            raise ConfigError([Problem("--augment", "rates must lie in [0, 1]", item)])
        if name in TEXT_OPS:
            text_ops.append((name, rate))
        elif name in MASK_OPS:
            if task != "mlm":
                raise ConfigError([Problem("--augment", f"{name} masking applies to task mlm only", item)])
            mask_op = (name, rate)
        else:
            raise ConfigError(
                [Problem("--augment", f"unknown op {name!r} (ops: {', '.join(TEXT_OPS + MASK_OPS)})", item)]
            )
    table = load_synonyms(synonyms_path) if synonyms_path else {}
    if any(name == "synonym" for name, _ in text_ops) and not table:
        raise ConfigError([Problem("--synonyms", "the synonym op needs a synonym table (--synonyms FILE)")])
    return AugmentPlan(text_ops=tuple(text_ops), mask_op=mask_op, synonyms=table)


def load_synonyms(path: str) -> dict[str, list[str]]:
    """`word<TAB>syn1,syn2` or `word syn1 syn2` per line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"synonym table {path}: cannot be read: {e}") from e
    table: dict[str, list[str]] = {}
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        head, sep, tail = line.partition("\t")
        words = [w.strip() for w in tail.split(",")] if sep else head.split()[1:]
        key = head.strip() if sep else head.split()[0]
        words = [w for w in words if w and w != key]
        if words:
            table.setdefault(key.lower(), []).extend(words)
    if not table:
        raise DataError(f"synonym table {path}: no entries")
    return table


def record_rng(seed: int, source: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, source, epoch, index])


def delete_words(words: list[str], rate: float, rng: np.random.Generator, table: dict) -> list[str]:
    keep = rng.random(len(words)) >= rate
    if not keep.any():
        return [words[int(rng.integers(len(words)))]]
    return [w for w, k in zip(words, keep, strict=True) if k]


def swap_words(words: list[str], rate: float, rng: np.random.Generator, table: dict) -> list[str]:
    words = list(words)
    n = len(words)
    if n < 2:
        return words
    for _ in range(int(rng.binomial(n, rate))):
        i, j = rng.choice(n, size=2, replace=False)
        words[i], words[j] = words[j], words[i]
    return words


def insert_words(words: list[str], rate: float, rng: np.random.Generator, table: dict) -> list[str]:
    words = list(words)
    count = int(rng.binomial(len(words), rate))
    with_synonyms = [w for w in words if w.lower() in table]
    for _ in range(count):
        # EDA inserts a synonym of a random word; without a table, a copy of a random word.
        if with_synonyms:
            choices = table[with_synonyms[int(rng.integers(len(with_synonyms)))].lower()]
            new = choices[int(rng.integers(len(choices)))]
        else:
            new = words[int(rng.integers(len(words)))]
        words.insert(int(rng.integers(len(words) + 1)), new)
    return words


def replace_synonyms(words: list[str], rate: float, rng: np.random.Generator, table: dict) -> list[str]:
    draws = rng.random(len(words))
    out = []
    for word, draw in zip(words, draws, strict=True):
        choices = table.get(word.lower())
        if choices and draw < rate:
            out.append(choices[int(rng.integers(len(choices)))])
        else:
            out.append(word)
    return out


TEXT_OP_FUNCS: dict[str, Callable[[list[str], float, np.random.Generator, dict], list[str]]] = {
    "delete": delete_words,
    "swap": swap_words,
    "insert": insert_words,
    "synonym": replace_synonyms,
}


def augment_text(text: str, plan: AugmentPlan, rng: np.random.Generator) -> str:
    """Apply the plan's text ops in order; labels are untouched, so this is label-preserving for seq-cls."""
    words = text.split()
    if not words:
        return text
    for name, rate in plan.text_ops:
        words = TEXT_OP_FUNCS[name](words, rate, rng, plan.synonyms)
    return " ".join(words)


def batch_generator(seed: int, dp_rank: int, batch_index: int) -> torch.Generator:
    value = int(
        np.random.SeedSequence([seed, dp_rank, batch_index, 11]).generate_state(1, dtype=np.uint64)[0]
    )
    return torch.Generator().manual_seed(value & 0x7FFF_FFFF_FFFF_FFFF)


class Masker:
    """mlm input corruption: choose positions (tokens, whole words or spans), then 80% [MASK], 10% random, 10% kept."""

    def __init__(self, tokenizer, *, probability: float, strategy: tuple[str, float] | None) -> None:
        self.mask_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.strategy = strategy[0] if strategy else "token"
        self.probability = strategy[1] if strategy else probability
        special = torch.zeros(self.vocab_size, dtype=torch.bool)
        special[[i for i in tokenizer.all_special_ids if i is not None and i < self.vocab_size]] = True
        self.special = special
        self.word_start = word_start_table(tokenizer) | special if self.strategy == "wwm" else None

    def __call__(
        self, input_ids: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        eligible = ~self.special[input_ids]
        if self.strategy == "wwm":
            selected = self._whole_words(input_ids, eligible, generator)
        elif self.strategy == "span":
            selected = self._spans(eligible, generator)
        else:
            selected = (torch.rand(input_ids.shape, generator=generator) < self.probability) & eligible
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
        draw = torch.rand(input_ids.shape, generator=generator)
        masked = input_ids.clone()
        masked[selected & (draw < 0.8)] = self.mask_id
        randomize = selected & (draw >= 0.8) & (draw < 0.9)
        random_ids = torch.randint(self.vocab_size, input_ids.shape, generator=generator)
        masked[randomize] = random_ids[randomize]
        return masked, labels

    def _whole_words(self, ids: torch.Tensor, eligible: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        assert self.word_start is not None
        word_index = torch.cumsum(self.word_start[ids].long(), dim=1)
        word_draw = torch.rand(ids.shape[0], ids.shape[1] + 1, generator=gen) < self.probability
        return torch.gather(word_draw, 1, word_index) & eligible

    def _spans(self, eligible: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        rows, width = eligible.shape
        selected = torch.zeros_like(eligible)
        geometric = 1.0 / SPAN_MEAN_LENGTH
        for row in range(rows):
            target = round(self.probability * int(eligible[row].sum()))
            # Loop over spans (a handful per row), never over tokens.
            for _ in range(4 * width):
                if int(selected[row].sum()) >= target:
                    break
                u = float(torch.rand(1, generator=gen))
                length = min(SPAN_MAX_LENGTH, 1 + int(np.floor(np.log1p(-u) / np.log1p(-geometric))))
                length = min(length, target - int(selected[row].sum()))
                start = int(torch.randint(max(1, width - length + 1), (1,), generator=gen))
                selected[row, start : start + length] = True
                selected[row] &= eligible[row]
        return selected


def word_start_table(tokenizer) -> torch.Tensor:
    """Per vocabulary id: does this token begin a word? (SentencePiece ▁, byte-level Ġ, WordPiece non-##)."""
    tokens: Sequence[str | None] = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    wordpiece = any(t is not None and t.startswith("##") for t in tokens)
    starts = torch.zeros(len(tokens), dtype=torch.bool)
    for i, token in enumerate(tokens):
        if token is None:
            continue
        starts[i] = (not token.startswith("##")) if wordpiece else token.startswith(("▁", "Ġ", " "))
    return starts
