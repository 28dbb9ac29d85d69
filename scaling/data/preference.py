"""Preference pairs (task dpo): records, their tokenization, and the batch that puts both answers side by side.

A record (a JSONL line, a Parquet row or an HF example, read whole) is one prompt with a preferred and a
rejected answer, in one of two formats, detected from its keys or named with `--data PATH:FORMAT`:

- pairs: `{"prompt": ..., "chosen": ..., "rejected": ...}`; the prompt is the user's turn (or a list of
  role/content messages, as TRL's conversational records have it);
- messages: `{"messages": [...], "chosen": ..., "rejected": ...}`: the conversation before the answers
  (system/user/assistant turns, ending with a user turn) and the two answers.

An answer is a string, or one assistant message (`{"role": "assistant", "content": ...}`, alone or in a
list). Each answer is rendered after the prompt with the chat template; only the answer's tokens (end token
included) are targets, so its log-probability is the sum over exactly those tokens. Earlier assistant turns
of the prompt are context, not targets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from scaling.data.chat import IGNORE, ROLES, Message, RecordError, split_turns

FORMATS = ("pairs", "messages")
ANSWERS = ("chosen", "rejected")
PAD_ID = -1
"""Padding of a pair's shorter answer inside its [2, 2, L] array (never a token id): the batch drops it."""


@dataclass(frozen=True)
class Pair:
    """One preference: the conversation before the answers, and the preferred and rejected answers."""

    prompt: list[Message]
    chosen: str
    rejected: str

    def conversations(self) -> list[list[Message]]:
        """The prompt followed by each answer as the assistant's turn: [chosen, rejected]."""
        return [[*self.prompt, {"role": "assistant", "content": a}] for a in (self.chosen, self.rejected)]


def detect_format(obj: dict) -> str | None:
    if not all(key in obj for key in ANSWERS):
        return None
    if "prompt" in obj:
        return "pairs"
    if "messages" in obj:
        return "messages"
    return None


def _answer(value: object, what: str) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        if value.get("role", "assistant") != "assistant" or "content" not in value:
            raise RecordError(f"'{what}' must be an answer text or one assistant message")
        value = value["content"]
    if not isinstance(value, str):
        raise RecordError(f"'{what}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(f"empty '{what}' answer")
    return value


def _turns(value: object, what: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise RecordError(f"'{what}' must be a non-empty list of role/content messages")
    messages = []
    for n, turn in enumerate(value):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise RecordError(f"'{what}' turn {n} needs 'role' and 'content'")
        if turn["role"] not in ROLES:
            raise RecordError(f"'{what}' turn {n}: unknown role {turn['role']!r} (known: {', '.join(ROLES)})")
        if not isinstance(turn["content"], str):
            raise RecordError(f"'{what}' turn {n} content must be a string")
        messages.append({"role": turn["role"], "content": turn["content"]})
    if messages[-1]["role"] != "user":
        raise RecordError(f"'{what}' must end with a user turn (the answers follow it)")
    return messages


def to_pair(obj: object, fmt: str | None) -> Pair:
    """The preference of one record, checked; RecordError says what is wrong."""
    if not isinstance(obj, dict):
        raise RecordError(f"a preference record must be a JSON object, got {type(obj).__name__}")
    obj = {key: value for key, value in obj.items() if value is not None}  # tables: other formats' columns
    found = fmt or detect_format(obj)
    if found is None:
        raise RecordError(
            f"matches no preference format (keys {sorted(obj)[:8]}; expected prompt/chosen/rejected (pairs) "
            "or messages/chosen/rejected)"
        )
    missing = [key for key in (("prompt" if found == "pairs" else "messages"), *ANSWERS) if key not in obj]
    if missing:
        raise RecordError(f"{found} record needs {', '.join(repr(k) for k in missing)}")
    if found == "pairs":
        prompt = obj["prompt"]
        if isinstance(prompt, str):
            if not prompt.strip():
                raise RecordError("empty 'prompt'")
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = _turns(prompt, "prompt")
    else:
        messages = _turns(obj["messages"], "messages")
    return Pair(messages, _answer(obj["chosen"], "chosen"), _answer(obj["rejected"], "rejected"))


def parse_pair(text: str, fmt: str | None) -> Pair:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise RecordError(f"not valid JSON ({e})") from None
    return to_pair(obj, fmt)


def training_text(text: str) -> str:
    """The text of a preference record, for training a tokenizer ('' for a record that is not one)."""
    try:
        pair = parse_pair(text, None)
    except RecordError:
        return ""
    return "\n".join([*(m["content"] for m in pair.prompt), pair.chosen, pair.rejected])


# -- tokenization -----------------------------------------------------------------------------------------


def encode_answer(tokenizer, conversation: list[Message]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a prompt + answer conversation: labels are the ids of the last assistant turn
    (the answer, end token included), -100 elsewhere. Pieces are tokenized apart (no token straddles)."""
    from scaling.data.pipeline import encode_texts

    pieces = split_turns(tokenizer, conversation)
    last = max(i for i, (_, target) in enumerate(pieces) if target)
    ids: list[int] = []
    labels: list[int] = []
    for i, piece in enumerate(encode_texts(tokenizer, [text for text, _ in pieces])):
        ids.extend(piece)
        labels.extend(piece if i == last else [IGNORE] * len(piece))
    return ids, labels


def fit(ids: list[int], labels: list[int], limit: int) -> tuple[list[int], list[int], bool]:
    """At most `limit` tokens: the prompt loses its oldest tokens first (the answer is what is compared); an
    answer longer than the limit keeps its beginning. Returns the ids, labels and whether anything was cut."""
    excess = len(ids) - limit
    if excess <= 0:
        return ids, labels, False
    first_target = next(i for i, label in enumerate(labels) if label != IGNORE)
    # Keep one prompt token: the first answer token is a target only when something precedes it.
    drop = min(excess, max(first_target - 1, 0))
    ids, labels = ids[drop:], labels[drop:]
    return ids[:limit], labels[:limit], True


def encode_pairs(tokenizer, pairs: list[Pair], seq_len: int) -> tuple[list[np.ndarray], int]:
    """One array [2, 2, L] per pair (answer: chosen, rejected; row: ids, labels), the shorter answer padded
    with PAD_ID / -100 to the longer; and how many sequences were cut to `seq_len`."""
    out = []
    truncated = 0
    for pair in pairs:
        rows = []
        for conversation in pair.conversations():
            ids, labels, cut = fit(*encode_answer(tokenizer, conversation), seq_len)
            truncated += cut
            rows.append((ids, labels))
        width = max(len(ids) for ids, _ in rows)
        array = np.full((2, 2, width), PAD_ID, dtype=np.int64)
        array[:, 1] = IGNORE
        for k, (ids, labels) in enumerate(rows):
            array[k, 0, : len(ids)] = ids
            array[k, 1, : len(labels)] = labels
        out.append(array)
    return out, truncated


def dpo_batch(pairs: list[np.ndarray], *, pad: int) -> dict[str, torch.Tensor]:
    """A micro-batch of b pairs as 2b rows: the chosen answers first, then the rejected ones in the same
    order (row i and row b + i are one pair), right-padded, labels on the answer tokens only."""
    rows = [pair[0] for pair in pairs] + [pair[1] for pair in pairs]
    lengths = [int((row[0] != PAD_ID).sum()) for row in rows]
    width = max(lengths)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row, length) in enumerate(zip(rows, lengths, strict=True)):
        input_ids[i, :length] = torch.from_numpy(row[0, :length])
        labels[i, :length] = torch.from_numpy(row[1, :length])
        attention_mask[i, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
