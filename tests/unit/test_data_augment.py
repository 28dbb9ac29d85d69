"""Augmentation ops: rates within tolerance, determinism per record, label preservation, mlm masking statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scaling.data.augment import (
    Masker,
    augment_text,
    batch_generator,
    delete_words,
    insert_words,
    parse_augment,
    record_rng,
    replace_synonyms,
    swap_words,
)
from scaling.errors import ConfigError

SHAKESPEARE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare.txt"
WORDS = [f"w{i}" for i in range(200)]
TABLE = {f"w{i}": [f"s{i}a", f"s{i}b"] for i in range(0, 200, 2)}


def test_delete_rate():
    kept = [len(delete_words(WORDS, 0.1, record_rng(0, 0, 0, i), {})) for i in range(200)]
    assert abs(1 - np.mean(kept) / len(WORDS) - 0.1) < 0.01
    assert delete_words(["only"], 1.0, record_rng(0, 0, 0, 0), {}) == ["only"]  # never empties a text


def test_swap_rate_and_multiset():
    changed = []
    for i in range(200):
        out = swap_words(WORDS, 0.05, record_rng(0, 0, 0, i), {})
        assert sorted(out) == sorted(WORDS)
        changed.append(sum(a != b for a, b in zip(out, WORDS, strict=True)))
    assert abs(np.mean(changed) / len(WORDS) - 2 * 0.05) < 0.015  # each swap moves two words


def test_insert_rate_uses_synonyms():
    grown = []
    for i in range(200):
        out = insert_words(WORDS, 0.1, record_rng(0, 0, 0, i), TABLE)
        grown.append(len(out) - len(WORDS))
        assert all(w in WORDS or w.startswith("s") for w in out)
    assert abs(np.mean(grown) / len(WORDS) - 0.1) < 0.01


def test_synonym_rate_among_words_with_synonyms():
    replaced = []
    for i in range(200):
        out = replace_synonyms(WORDS, 0.3, record_rng(0, 0, 0, i), TABLE)
        swapped = [o for o, w in zip(out, WORDS, strict=True) if o != w]
        assert all(o in TABLE[w] for o, w in zip(out, WORDS, strict=True) if o != w)
        replaced.append(len(swapped) / len(TABLE))
    assert abs(np.mean(replaced) - 0.3) < 0.02


def test_composed_ops_are_deterministic_per_record_and_label_preserving(tmp_path):
    syn = tmp_path / "syn.tsv"
    syn.write_text("king\tmonarch,sovereign\nlord\tmaster\n")
    plan = parse_augment("delete:0.1,swap:0.05,synonym:0.5,insert:0.05", str(syn), task="seq-cls")
    text = SHAKESPEARE.read_text(encoding="utf-8")[:2000].replace("\n", " ")
    a = augment_text(text, plan, record_rng(7, 1, 2, 3))
    assert a == augment_text(text, plan, record_rng(7, 1, 2, 3))
    assert a != augment_text(text, plan, record_rng(7, 1, 2, 4)) and a != text


def test_parse_errors_name_the_op(tmp_path):
    with pytest.raises(ConfigError, match="unknown op 'shout'"):
        parse_augment("shout:0.1", None, task="clm")
    with pytest.raises(ConfigError, match="synonym table"):
        parse_augment("synonym:0.1", None, task="clm")
    with pytest.raises(ConfigError, match="mlm only"):
        parse_augment("wwm:0.15", None, task="clm")


class _Tok:
    """A tokenizer stand-in: ids 0..3 special, even ids start a word (▁x), odd ids continue it."""

    mask_token_id = 3
    all_special_ids = (0, 1, 2, 3)

    def __len__(self) -> int:
        return 1000

    def convert_ids_to_tokens(self, ids):
        return [f"<s{i}>" if i < 4 else ("▁t" if i % 2 == 0 else "t") for i in ids]


def _ids(rows=64, width=256):
    return torch.randint(4, 1000, (rows, width), generator=torch.Generator().manual_seed(0))


def test_token_masking_is_15_percent_and_80_10_10():
    ids = _ids()
    masked, labels = Masker(_Tok(), probability=0.15, strategy=None)(ids, batch_generator(0, 0, 0))
    selected = labels != -100
    assert abs(selected.float().mean().item() - 0.15) < 0.01
    assert torch.equal(labels[selected], ids[selected])
    as_mask = (masked[selected] == 3).float().mean().item()
    kept = (masked[selected] == ids[selected]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02
    again, _ = Masker(_Tok(), probability=0.15, strategy=None)(ids, batch_generator(0, 0, 0))
    assert torch.equal(again, masked)


def test_whole_word_masking_masks_entire_words():
    ids = _ids()
    _, labels = Masker(_Tok(), probability=0.15, strategy=("wwm", 0.15))(ids, batch_generator(1, 0, 0))
    selected = labels != -100
    starts = ids % 2 == 0
    word = torch.cumsum(starts.long(), 1)
    for row in range(4):
        for w in torch.unique(word[row][selected[row]]):
            assert selected[row][word[row] == w].all()
    assert abs(selected.float().mean().item() - 0.15) < 0.03


def test_span_masking_makes_contiguous_spans_at_the_rate():
    ids = _ids(rows=32)
    _, labels = Masker(_Tok(), probability=0.15, strategy=("span", 0.15))(ids, batch_generator(2, 0, 0))
    selected = (labels != -100).int()
    assert abs(selected.float().mean().item() - 0.15) < 0.01
    starts = int(((selected[:, 1:] == 1) & (selected[:, :-1] == 0)).sum() + selected[:, 0].sum())
    assert int(selected.sum()) / starts > 1.8  # mean span length well above single tokens
