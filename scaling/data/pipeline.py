"""Chunks: the unit in which records are read, augmented, tokenized, packed or bucketed, and shuffled.

A chunk is a pure function of the state at its start (source positions, carry-over tokens, weights,
chunk index), so the stream saves only that state plus how many items of the chunk it has emitted.
Resume re-reads one chunk (bounded work, independent of the position) and skips the emitted items.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from scaling.data.augment import AugmentPlan, augment_text, record_rng
from scaling.data.config import DataConfig
from scaling.data.streams import RecordStream, SourceRecord


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
        encoded = encode_texts(self.tokenizer, texts)
        next_state = {
            "chunk": state["chunk"] + 1,
            "sources": [s.state() for s in self.streams],
            "carry": [],
            "weights": list(state["weights"]),
        }
        stats = {"docs": len(records), "truncated": 0}
        if self.packed:
            blocks, carry = pack_tokens(encoded, state["carry"], self.ids["eos"], self.data.seq_len)
            next_state["carry"] = carry
            if self.shuffle and len(blocks) > 1:
                blocks = blocks[
                    chunk_rng(self.seed, self.dp_rank, state["chunk"], 2).permutation(len(blocks))
                ]
            return Chunk(blocks=blocks, batches=None, docs=len(records)), next_state, stats
        batches, truncated = self._bucket(encoded, [r.label for _, r in records], state["chunk"])
        stats["truncated"] = truncated
        return Chunk(blocks=None, batches=batches, docs=len(records)), next_state, stats

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
        # Length-grouped batching: neighbours in length share a batch (little padding); batch order is shuffled.
        order = np.argsort(
            np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs)), kind="stable"
        )
        groups = [order[i : i + self.micro_batch] for i in range(0, len(order), self.micro_batch)]
        if self.shuffle and len(groups) > 1:
            perm = chunk_rng(self.seed, self.dp_rank, chunk_index, 3).permutation(len(groups))
            groups = [groups[i] for i in perm]
        batches = [([seqs[i] for i in g], [labels[i] for i in g]) for g in groups]
        return batches, truncated


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
    rows, width = input_ids.shape
    starts = torch.zeros_like(input_ids, dtype=torch.bool)
    starts[:, 0] = True
    starts[:, 1:] = input_ids[:, :-1] == eos
    columns = torch.arange(width).expand(rows, width)
    last_start = torch.cummax(torch.where(starts, columns, torch.zeros_like(columns)), dim=1).values
    return columns - last_start, starts


def padded_batch(
    seqs: list[np.ndarray], labels: list[int | None], *, task: str, pad: int
) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of the batch (dynamic padding)."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = torch.from_numpy(seq)
        attention_mask[row, : len(seq)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if task == "seq-cls":
        batch["labels"] = torch.tensor([int(label) for label in labels], dtype=torch.long)  # type: ignore[arg-type]
    else:
        batch["labels"] = input_ids.masked_fill(attention_mask == 0, -100)
    return batch
