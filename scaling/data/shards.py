"""Offline preprocessing: sources -> packed token blocks in memory-mapped shards, with an index and a manifest.

Layout of DIR:
  manifest.json   format, seq_len, dtype, tokenizer fingerprint, counts, sources
  index.json      one entry per shard: file name, blocks, first global block
  shard-NNNNN.bin raw little-endian uint16/uint32 tokens, blocks of seq_len, row-major
Training reads DIR with `--data DIR`: no tokenizer work, O(1) seek by block index.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.data.pipeline import Chunk, encode_texts, pack_tokens, tokenizer_ids
from scaling.data.sources import PACKED_MANIFEST, parse_spec
from scaling.data.streams import open_record_stream
from scaling.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from scaling.errors import DataError

FORMAT = "scaling-packed-tokens"
VERSION = 1
INDEX = "index.json"


@dataclass(frozen=True)
class PreprocessResult:
    """What `preprocess` wrote."""

    output: Path
    blocks: int
    tokens: int
    docs: int
    shards: int
    dropped_tail_tokens: int


_worker_tokenizer = None


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(tokenizer_dir)


def _encode(texts: list[str]) -> list[list[int]]:
    assert _worker_tokenizer is not None
    return encode_texts(_worker_tokenizer, texts)


def _text_batches(specs: list[str], batch_docs: int, max_doc_chars: int, progress) -> Iterator[list[str]]:
    for raw in specs:
        stream = open_record_stream(
            parse_spec(raw), label_column=None, max_doc_chars=max_doc_chars, dp_rank=0, dp_size=1, seed=0
        )
        stream.shuffle_files = False
        while True:
            batch = []
            for _ in range(batch_docs):
                record = stream.next_record(stop_at_epoch_end=True)
                if record is None:
                    break
                batch.append(record.text)
            if batch:
                progress.update(len(batch))
                yield batch
            if len(batch) < batch_docs:
                break


def preprocess(
    specs: list[str],
    tokenizer_dir: str,
    output: str | os.PathLike,
    *,
    seq_len: int,
    workers: int = 1,
    shard_blocks: int = 65536,
    batch_docs: int = 1000,
    max_doc_chars: int = 1_000_000,
    show_progress: bool = True,
) -> PreprocessResult:
    from tqdm import tqdm

    tokenizer = load_tokenizer(tokenizer_dir)
    ids = tokenizer_ids(tokenizer)
    if ids["eos"] < 0:
        raise DataError(f"tokenizer {tokenizer_dir}: has no eos/sep token to separate packed documents")
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"output {out}: exists and is not empty")
    for raw in specs:  # fail fast, before any worker starts, on a missing or empty source
        open_record_stream(
            parse_spec(raw), label_column=None, max_doc_chars=max_doc_chars, dp_rank=0, dp_size=1, seed=0
        )
    out.mkdir(parents=True, exist_ok=True)

    shards: list[dict] = []
    carry: list[int] = []
    totals = {"blocks": 0, "tokens": 0, "docs": 0}
    writer: _ShardWriter | None = None
    progress = tqdm(desc="preprocess", unit="doc", disable=not show_progress, mininterval=1.0)
    batches = _text_batches(specs, batch_docs, max_doc_chars, progress)
    pool = None
    encoded_batches: Iterator[list[list[int]]]
    try:
        if workers > 1:
            pool = multiprocessing.get_context("fork").Pool(
                workers, initializer=_init_worker, initargs=(tokenizer_dir,)
            )
            encoded_batches = pool.imap(_encode, batches, chunksize=1)
        else:
            _init_worker(tokenizer_dir)
            encoded_batches = map(_encode, batches)
        for encoded in encoded_batches:
            blocks, carry = pack_tokens(encoded, carry, ids["eos"], seq_len)
            totals["docs"] += len(encoded)
            totals["tokens"] += sum(len(e) + 1 for e in encoded)
            start = 0
            while start < len(blocks):
                if writer is None or writer.blocks == shard_blocks:
                    if writer is not None:
                        shards.append(writer.close())
                    writer = _ShardWriter(out, len(shards), totals["blocks"], dtype)
                take = min(shard_blocks - writer.blocks, len(blocks) - start)
                writer.write(blocks[start : start + take])
                totals["blocks"] += take
                start += take
    finally:
        progress.close()
        if pool is not None:
            pool.close()
            pool.join()
    if writer is not None:
        shards.append(writer.close())
    if totals["blocks"] == 0:
        raise DataError(f"sources {', '.join(specs)}: fewer than {seq_len} tokens, not one block to write")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "seq_len": seq_len,
        "dtype": np.dtype(dtype).name,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "tokenizer": str(tokenizer_dir),
        "vocab_size": len(tokenizer),
        "eos_id": ids["eos"],
        "blocks": totals["blocks"],
        "tokens": totals["tokens"],
        "docs": totals["docs"],
        "dropped_tail_tokens": len(carry),
        "sources": list(specs),
    }
    (out / INDEX).write_text(json.dumps({"shards": shards}, indent=1))
    (out / PACKED_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return PreprocessResult(out, totals["blocks"], totals["tokens"], totals["docs"], len(shards), len(carry))


class _ShardWriter:
    def __init__(self, out: Path, number: int, first_block: int, dtype) -> None:
        self.name = f"shard-{number:05d}.bin"
        self.file = open(out / self.name, "wb")  # noqa: SIM115 - closed by close()
        self.first_block = first_block
        self.dtype = dtype
        self.blocks = 0

    def write(self, blocks: np.ndarray) -> None:
        self.file.write(blocks.astype(self.dtype).tobytes())
        self.blocks += len(blocks)

    def close(self) -> dict:
        self.file.close()
        return {"file": self.name, "blocks": self.blocks, "first_block": self.first_block}


class PackedShards:
    """A preprocessed directory, memory-mapped; validated against the run's tokenizer and seq_len."""

    def __init__(self, path: str, *, tokenizer, seq_len: int) -> None:
        root = Path(path)
        try:
            manifest = json.loads((root / PACKED_MANIFEST).read_text())
            index = json.loads((root / INDEX).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"preprocessed data {path}: unreadable manifest or index: {e}") from e
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise DataError(f"preprocessed data {path}: not a {FORMAT} v{VERSION} directory")
        if manifest["seq_len"] != seq_len:
            raise DataError(
                f"preprocessed data {path}: packed with seq_len {manifest['seq_len']}, run uses --seq-len {seq_len}"
            )
        expected = tokenizer_fingerprint(tokenizer)
        if manifest["tokenizer_fingerprint"] != expected:
            raise DataError(
                f"preprocessed data {path}: tokenized with a different tokenizer ({manifest['tokenizer']}, "
                f"fingerprint {manifest['tokenizer_fingerprint']}) than this run's ({expected}); "
                "preprocess again with this tokenizer"
            )
        self.manifest = manifest
        self.seq_len = seq_len
        dtype = np.dtype(manifest["dtype"])
        self.maps: list[np.memmap] = []
        self.first_blocks: list[int] = []
        for shard in index["shards"]:
            file = root / shard["file"]
            want = shard["blocks"] * seq_len * dtype.itemsize
            if not file.is_file() or file.stat().st_size != want:
                got = file.stat().st_size if file.is_file() else "missing"
                raise DataError(
                    f"preprocessed data {path}: shard {shard['file']} is {got} bytes, index says {want}"
                )
            self.maps.append(np.memmap(file, dtype=dtype, mode="r", shape=(shard["blocks"], seq_len)))
            self.first_blocks.append(shard["first_block"])
        self.blocks = int(manifest["blocks"])
        if sum(len(m) for m in self.maps) != self.blocks:
            raise DataError(f"preprocessed data {path}: index and manifest disagree on the number of blocks")

    def gather(self, indices: np.ndarray) -> np.ndarray:
        shard_of = np.searchsorted(np.asarray(self.first_blocks), indices, side="right") - 1
        out = np.empty((len(indices), self.seq_len), dtype=np.int64)
        for shard in np.unique(shard_of):
            rows = np.nonzero(shard_of == shard)[0]
            out[rows] = self.maps[shard][indices[rows] - self.first_blocks[shard]]
        return out


class ShardChunker:
    """Chunks of packed blocks from a preprocessed directory: block i of an epoch's permutation goes to rank i % W."""

    def __init__(
        self,
        shards: PackedShards,
        *,
        seed: int,
        dp_rank: int,
        dp_size: int,
        chunk_blocks: int,
        shuffle: bool = True,
    ) -> None:
        if shards.blocks < dp_size:
            raise DataError(f"preprocessed data: {shards.blocks} blocks for {dp_size} data-parallel ranks")
        self.shards = shards
        self.seed, self.dp_rank, self.dp_size = seed, dp_rank, dp_size
        self.chunk_blocks = chunk_blocks
        self.shuffle = shuffle
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def rank_blocks(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            n = self.shards.blocks
            order = (
                np.random.default_rng([self.seed, epoch, 5]).permutation(n) if self.shuffle else np.arange(n)
            )
            self._order, self._order_epoch = order[self.dp_rank :: self.dp_size], epoch
        return self._order

    def initial_state(self, weights: list[float]) -> dict:
        return {"chunk": 0, "sources": [{"epoch": 0, "position": 0}], "carry": [], "weights": list(weights)}

    def produce(self, state: dict) -> tuple[Chunk, dict, dict[str, int]]:
        epoch, position = state["sources"][0]["epoch"], state["sources"][0]["position"]
        mine = self.rank_blocks(epoch)
        take = mine[position : position + self.chunk_blocks]
        position += len(take)
        if position >= len(mine):
            epoch, position = epoch + 1, 0
        next_state = dict(state, chunk=state["chunk"] + 1, sources=[{"epoch": epoch, "position": position}])
        return (
            Chunk(blocks=self.shards.gather(take), batches=None, docs=0),
            next_state,
            {"docs": 0, "truncated": 0},
        )
