"""Chunks: the unit in which records are read, augmented, tokenized, packed or bucketed, and shuffled.

A chunk is a pure function of the state at its start (source positions, carry-over tokens, weights,
chunk index), so the stream saves only that state plus how many items of the chunk it has emitted.
Resume re-reads one chunk (bounded work, independent of the position) and skips the emitted items.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch

from scaling.data.augment import AugmentPlan, augment_text, record_rng
from scaling.data.chat import IGNORE, RecordError, check_format_name, encode_conversations, parse_record
from scaling.data.config import DataConfig
from scaling.data.streams import RecordStream, SourceRecord
from scaling.errors import DataError

RECORD_TASKS = ("sft", "dpo")
"""Tasks whose sources are read as whole JSON records (conversations, preference pairs), not text."""


def tokenizer_ids(tokenizer) -> dict[str, int]:
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    return {"eos": -1 if eos is None else int(eos), "pad": int(pad)}


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens, in one batched call into the Rust tokenizer when there is one.

    `encode_batch_fast` skips offsets and the per-encoding Python conversion of `tokenizer(...)`; the ids are
    the same (tested against `tokenizer(...)`).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        # A tokenizer.json may switch on padding/truncation in the backend (sentence-transformers models pad
        # every text to 128): the chunker frames, truncates and pads itself, so the ids must be the bare text.
        # `tokenizer(...)` switches them off the same way before each call.
        if backend.padding is not None:
            backend.no_padding()
        if backend.truncation is not None:
            backend.no_truncation()
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]


def chunk_rng(seed: int, dp_rank: int, chunk_index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, dp_rank, chunk_index, purpose])


@dataclass
class Chunk:
    """What one chunk yields: packed blocks [k, seq_len] or a list of variable-length batches."""

    blocks: np.ndarray | None
    batches: list[tuple[list[np.ndarray], list[int | None]]] | None
    docs: int

    def __len__(self) -> int:
        return len(self.blocks) if self.blocks is not None else len(self.batches or [])


class TextChunker:
    """Reads records from one or more RecordStreams and turns them into chunks."""

    def __init__(
        self,
        streams: list[RecordStream],
        tokenizer,
        data: DataConfig,
        *,
        task: str,
        micro_batch: int,
        seed: int,
        dp_rank: int,
        augment: AugmentPlan | None,
        packed: bool,
        shuffle: bool = True,
    ) -> None:
        self.streams = streams
        self.tokenizer = tokenizer
        self.data = data
        self.task = task
        self.micro_batch = micro_batch
        self.seed, self.dp_rank = seed, dp_rank
        self.augment = augment if augment is not None and augment.active else None
        self.packed = packed
        self.shuffle = shuffle
        self.ids = tokenizer_ids(tokenizer)
        # seq-cls inputs are framed like the tokenizer frames a single sequence, with our trained ones cls..sep.
        cls_id, sep_id = getattr(tokenizer, "cls_token_id", None), getattr(tokenizer, "sep_token_id", None)
        self.frame = (
            (cls_id, sep_id) if task == "seq-cls" and cls_id is not None and sep_id is not None else None
        )
        self.formats = (
            [check_format_name(s.spec.raw, s.spec.field, task) for s in streams]
            if task in RECORD_TASKS
            else []
        )

    def initial_state(self, weights: list[float]) -> dict:
        return {
            "chunk": 0,
            "sources": [s.state() for s in self.streams],
            "carry": [],
            "weights": list(weights),
        }

    def _seek(self, state: dict) -> None:
        for stream, wanted in zip(self.streams, state["sources"], strict=True):
            if stream.state() != wanted:
                stream.load_state(wanted)

    def _read(self, state: dict) -> list[tuple[int, SourceRecord]]:
        records: list[tuple[int, SourceRecord]] = []
        chars = 0
        budget_docs, budget_chars = self.data.chunk_docs, self.data.chunk_chars
        if len(self.streams) == 1:
            # One source: a chunk never straddles a pass, so an epoch ends exactly at a chunk boundary.
            while len(records) < budget_docs and chars < budget_chars:
                record = self.streams[0].next_record(stop_at_epoch_end=bool(records))
                if record is None:
                    break
                records.append((0, record))
                chars += len(record.text)
            return records
        choice = chunk_rng(self.seed, self.dp_rank, state["chunk"], 1).choice(
            len(self.streams), size=budget_docs, p=np.asarray(state["weights"]) / np.sum(state["weights"])
        )
        for source in choice.tolist():
            record = self.streams[source].next_record()
            assert record is not None
            records.append((source, record))
            chars += len(record.text)
            if chars >= budget_chars:
                break
        return records

    def produce(self, state: dict) -> tuple[Chunk, dict, dict[str, int]]:
        self._seek(state)
        records = self._read(state)
        texts = [r.text for _, r in records]
        if self.augment is not None:
            texts = [
                augment_text(text, self.augment, record_rng(self.seed, src, r.epoch, r.index))
                for text, (src, r) in zip(texts, records, strict=True)
            ]
        if self.task == "sft":
            return self._produce_sft(state, records)
        if self.task == "dpo":
            return self._produce_dpo(state, records)
        encoded = encode_texts(self.tokenizer, texts)
        next_state = self._next_state(state)
        stats = {"docs": len(records), "truncated": 0}
        if self.packed:
            blocks, carry = pack_tokens(encoded, state["carry"], self.ids["eos"], self.data.seq_len)
            next_state["carry"] = carry
            blocks = self._shuffled(blocks, state["chunk"])
            return Chunk(blocks=blocks, batches=None, docs=len(records)), next_state, stats
        batches, truncated = self._bucket(encoded, [r.label for _, r in records], state["chunk"])
        stats["truncated"] = truncated
        return Chunk(blocks=None, batches=batches, docs=len(records)), next_state, stats

    def _next_state(self, state: dict) -> dict:
        """The chunk state after this chunk (its carry is filled in by packing)."""
        return {
            "chunk": state["chunk"] + 1,
            "sources": [s.state() for s in self.streams],
            "carry": [],
            "weights": list(state["weights"]),
        }

    def _shuffled(self, blocks: np.ndarray, chunk: int) -> np.ndarray:
        """Packed blocks in a seeded order of (seed, data rank, chunk): the same after a resume."""
        if self.shuffle and len(blocks) > 1:
            return blocks[chunk_rng(self.seed, self.dp_rank, chunk, 2).permutation(len(blocks))]
        return blocks

    def _parse_records(self, records: list[tuple[int, SourceRecord]], parse: Any) -> list[Any]:
        """Each record through `parse(text, format)`; a bad one stops the run naming its source and index."""
        parsed = []
        for source, record in records:
            try:
                parsed.append(parse(record.text, self.formats[source]))
            except RecordError as e:
                raise DataError(
                    f"data source {self.streams[source].spec.raw!r}, record {record.index + 1}: {e}"
                ) from None
        return parsed

    def encode_conversations(
        self, records: list[tuple[int, SourceRecord]]
    ) -> list[tuple[list[int], list[int]]]:
        conversations = self._parse_records(records, parse_record)
        return encode_conversations(self.tokenizer, conversations, train_on_prompt=self.data.train_on_prompt)

    def _produce_sft(
        self, state: dict, records: list[tuple[int, SourceRecord]]
    ) -> tuple[Chunk, dict, dict[str, int]]:
        """Chat SFT: blocks [k, 3, seq_len] of ids, labels and conversation starts, or padded rows [2, n]."""
        encoded = self.encode_conversations(records)
        next_state = self._next_state(state)
        stats = {"docs": len(records), "truncated": 0}
        # A block or row without a single target (a long prompt) is dropped: alone in a micro-batch its mean
        # loss would be 0/0, and it teaches nothing.
        if self.packed:
            blocks, next_state["carry"] = pack_conversations(encoded, state["carry"], self.data.seq_len)
            blocks = blocks[((blocks[:, 1, 1:] != IGNORE) & (blocks[:, 2, 1:] == 0)).any(axis=1)]
            blocks = self._shuffled(blocks, state["chunk"])
            return Chunk(blocks=blocks, batches=None, docs=len(records)), next_state, stats
        limit = self.data.seq_len
        rows = []
        for ids, labels in encoded:
            if len(ids) > limit:
                stats["truncated"] += 1
            if any(label != IGNORE for label in labels[1:limit]):
                rows.append(np.asarray([ids[:limit], labels[:limit]], dtype=np.int64))
        batches = self._group(rows, [None] * len(rows), state["chunk"])
        return Chunk(blocks=None, batches=batches, docs=len(records)), next_state, stats

    def _produce_dpo(
        self, state: dict, records: list[tuple[int, SourceRecord]]
    ) -> tuple[Chunk, dict, dict[str, int]]:
        """Preference pairs: batches of [2, 2, L] pair arrays (scaling.data.preference), never packed."""
        from scaling.data.preference import encode_pairs, parse_pair

        pairs = self._parse_records(records, parse_pair)
        arrays, truncated = encode_pairs(self.tokenizer, pairs, self.data.seq_len)
        batches = self._group(arrays, [None] * len(arrays), state["chunk"])
        stats = {"docs": len(records), "truncated": truncated}
        return Chunk(blocks=None, batches=batches, docs=len(records)), self._next_state(state), stats

    def _bucket(self, encoded: list[list[int]], labels: list[int | None], chunk_index: int):
        limit = self.data.seq_len
        frame_len = 2 if self.frame else (1 if self.task != "seq-cls" and self.ids["eos"] >= 0 else 0)
        truncated = 0
        seqs: list[np.ndarray] = []
        for ids in encoded:
            if len(ids) + frame_len > limit:
                truncated += 1
                ids = ids[: limit - frame_len]
            if self.frame:
                ids = [self.frame[0], *ids, self.frame[1]]
            elif frame_len:
                ids = [*ids, self.ids["eos"]]
            seqs.append(np.asarray(ids, dtype=np.int64))
        return self._group(seqs, labels, chunk_index), truncated

    def _group(self, seqs: list[np.ndarray], labels: list[int | None], chunk_index: int):
        # Length-grouped batching: neighbours in length share a batch (little padding); batch order is shuffled.
        order = np.argsort(
            np.fromiter((s.shape[-1] for s in seqs), dtype=np.int64, count=len(seqs)), kind="stable"
        )
        groups = [order[i : i + self.micro_batch] for i in range(0, len(order), self.micro_batch)]
        if self.shuffle and len(groups) > 1:
            perm = chunk_rng(self.seed, self.dp_rank, chunk_index, 3).permutation(len(groups))
            groups = [groups[i] for i in perm]
        return [([seqs[i] for i in g], [labels[i] for i in g]) for g in groups]


def pack_tokens(
    encoded: list[list[int]], carry: list[int], eos: int, seq_len: int
) -> tuple[np.ndarray, list[int]]:
    """Documents joined with EOS after each, prefixed by the carry, cut into full blocks; the rest carries over."""
    lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
    flat = np.fromiter(chain.from_iterable(encoded), dtype=np.int64, count=int(lengths.sum()))
    total = len(carry) + len(flat) + len(encoded)
    out = np.empty(total, dtype=np.int64)
    out[: len(carry)] = carry
    eos_positions = len(carry) + np.cumsum(lengths + 1) - 1
    is_token = np.ones(total, dtype=bool)
    is_token[: len(carry)] = False
    is_token[eos_positions] = False
    out[is_token] = flat
    out[eos_positions] = eos
    n_blocks = total // seq_len
    return out[: n_blocks * seq_len].reshape(n_blocks, seq_len), out[n_blocks * seq_len :].tolist()


def packed_batch(blocks: np.ndarray, *, eos: int, cross_doc_attention: bool) -> dict[str, torch.Tensor]:
    """clm batch of full blocks. Without cross-doc attention: positions restart after each EOS and the
    attention mask is left out, which is how HF models (sdpa, eager, flash) detect packed sequences and
    block attention across documents; the first token of each later document is not a target."""
    input_ids = torch.from_numpy(np.ascontiguousarray(blocks)).long()
    labels = input_ids.clone()
    if cross_doc_attention:
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    position_ids, starts = document_positions(input_ids, eos)
    labels[:, 1:][starts[:, 1:]] = -100
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def document_positions(input_ids: torch.Tensor, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.zeros_like(input_ids, dtype=torch.bool)
    starts[:, 1:] = input_ids[:, :-1] == eos
    return positions_from_starts(starts), starts


def positions_from_starts(starts: torch.Tensor) -> torch.Tensor:
    """Position ids restarting at every marked document start (and at each row's first token)."""
    starts[:, 0] = True
    rows, width = starts.shape
    columns = torch.arange(width).expand(rows, width)
    last_start = torch.cummax(torch.where(starts, columns, torch.zeros_like(columns)), dim=1).values
    return columns - last_start


def pack_conversations(
    encoded: list[tuple[list[int], list[int]]], carry: list[list[int]], seq_len: int
) -> tuple[np.ndarray, list[list[int]]]:
    """Conversations (ids, labels) joined, prefixed by the carry, cut into blocks [k, 3, seq_len] of ids,
    labels and a start flag on each conversation's first token; the rest carries over. No EOS is added: the
    template's end token closes each assistant turn, and the start flags (not an EOS) separate conversations,
    so a template whose end token is the EOS still keeps a multi-turn conversation in one piece."""
    ids = list(chain.from_iterable(e[0] for e in encoded))
    labels = list(chain.from_iterable(e[1] for e in encoded))
    starts = list(chain.from_iterable([1] + [0] * (len(e[0]) - 1) for e in encoded if e[0]))
    rows = np.asarray([ids, labels, starts], dtype=np.int64).reshape(3, -1)
    if carry:
        rows = np.concatenate([np.asarray(carry, dtype=np.int64).reshape(3, -1), rows], axis=1)
    n_blocks = rows.shape[1] // seq_len
    blocks = rows[:, : n_blocks * seq_len].reshape(3, n_blocks, seq_len).transpose(1, 0, 2)
    return np.ascontiguousarray(blocks), rows[:, n_blocks * seq_len :].tolist()


def sft_packed_batch(blocks: np.ndarray) -> dict[str, torch.Tensor]:
    """Chat SFT batch of packed blocks [b, 3, seq_len]: positions restart at every conversation (no attention
    mask, so HF models block attention across them, as for clm without cross-doc attention); the first token
    of a later conversation is not a target of the one before."""
    tensor = torch.from_numpy(np.ascontiguousarray(blocks)).long()
    input_ids, labels, starts = tensor[:, 0].clone(), tensor[:, 1].clone(), tensor[:, 2].bool()
    position_ids = positions_from_starts(starts)
    labels[:, 1:][starts[:, 1:]] = -100
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def padded_batch(
    seqs: list[np.ndarray], labels: list[int | None], *, task: str, pad: int
) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of the batch (dynamic padding); dpo: both answers of each pair."""
    if task == "dpo":
        from scaling.data.preference import dpo_batch

        return dpo_batch(seqs, pad=pad)
    width = max(s.shape[-1] for s in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    sft_labels = torch.full((len(seqs), width), -100, dtype=torch.long) if task == "sft" else None
    for row, seq in enumerate(seqs):
        if sft_labels is not None:  # rows [2, n]: ids and labels
            sft_labels[row, : seq.shape[-1]] = torch.from_numpy(seq[1])
            seq = seq[0]
        input_ids[row, : len(seq)] = torch.from_numpy(seq)
        attention_mask[row, : len(seq)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if sft_labels is not None:
        batch["labels"] = sft_labels
    elif task == "seq-cls":
        batch["labels"] = torch.tensor([int(label) for label in labels], dtype=torch.long)  # type: ignore[arg-type]
    else:
        batch["labels"] = input_ids.masked_fill(attention_mask == 0, -100)
    return batch
