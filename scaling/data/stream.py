"""The training stream the engine iterates, and the finite eval batches."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from scaling.data.augment import Masker, batch_generator, parse_augment
from scaling.data.config import MIX_MODES, DataConfig
from scaling.data.mixing import dynamic_update, initial_weights
from scaling.data.pipeline import (
    RECORD_TASKS,
    Chunk,
    TextChunker,
    encode_texts,
    packed_batch,
    padded_batch,
    sft_packed_batch,
    tokenizer_ids,
)
from scaling.data.shards import PackedShards, ShardChunker
from scaling.data.sources import ReadLimits, SourceSpec, is_packed_dir, parse_spec
from scaling.data.streams import RecordStream, SourceRecord, open_record_stream
from scaling.errors import ConfigError, DataError, Problem

TASKS = ("clm", "mlm", "seq-cls", "sft", "dpo")
STATE_VERSION = 1
UNPACKED_TASKS = ("seq-cls", "dpo")
"""Tasks whose samples are never packed: one label per sequence, or (dpo) one log-probability per answer."""


def _validate(data: DataConfig, task: str, micro_batch: int, dp_rank: int, dp_size: int) -> None:
    problems = []
    if task not in TASKS:
        problems.append(Problem("task", f"must be one of {TASKS}", task))
    if micro_batch < 1:
        problems.append(Problem("micro_batch", "must be >= 1", micro_batch))
    if not 0 <= dp_rank < dp_size:
        problems.append(Problem("dp_rank", f"must lie in [0, {dp_size})", dp_rank))
    if data.mix not in MIX_MODES:
        problems.append(Problem("--mix", f"must be one of {MIX_MODES}", data.mix))
    if not 0.0 < data.mlm_probability < 1.0:
        problems.append(Problem("mlm_probability", "must lie in (0, 1)", data.mlm_probability))
    if task in RECORD_TASKS and data.augment:
        problems.append(
            Problem("--augment", f"text augmentation would corrupt chat records (task {task})", data.augment)
        )
    if data.mix_update_every < 1:
        problems.append(Problem("--mix-update-every", "must be >= 1", data.mix_update_every))
    if problems:
        raise ConfigError(problems)


def _open_streams(
    specs: list[SourceSpec], data: DataConfig, task: str, dp_rank: int, dp_size: int, seed: int, shuffle: bool
) -> list[RecordStream]:
    streams = []
    for spec in specs:
        stream = open_record_stream(
            spec,
            limits=ReadLimits.of(data),
            label_column=data.label_column if task == "seq-cls" else None,
            max_doc_chars=data.max_doc_chars,
            dp_rank=dp_rank,
            dp_size=dp_size,
            seed=seed,
            records=task in RECORD_TASKS,
        )
        stream.shuffle_files = shuffle
        streams.append(stream)
    return streams


class TrainStream:
    """Endless micro-batches for one data-parallel rank; resumable exactly from `state_dict()`."""

    def __init__(
        self,
        chunker: TextChunker | ShardChunker,
        *,
        data: DataConfig,
        task: str,
        micro_batch: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        weights: list[float],
        source_names: list[str],
        masker: Masker | None,
        probe_factory: Callable[[int], list[dict[str, torch.Tensor]]] | None,
        pad_id: int,
        eos_id: int,
    ) -> None:
        self.chunker = chunker
        self.data, self.task, self.micro_batch = data, task, micro_batch
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.source_names = source_names
        self.masker = masker
        self.pad_id, self.eos_id = pad_id, eos_id
        self._probe_factory = probe_factory
        self._probes: dict[int, list[dict[str, torch.Tensor]]] = {}
        self._initial_weights = list(weights)
        self._weights = list(weights)
        self._chunk_state = chunker.initial_state(weights)
        self._chunk: Chunk | None = None
        self._next_state: dict | None = None
        self._emitted = 0
        self._batches = 0
        self._counters = {"tokens": 0, "pad_tokens": 0, "docs": 0, "truncated": 0}
        self._last_update_step = -1
        self._steps_per_epoch: dict[int, int] = {}
        # The next chunk is tokenized on a background thread while the model trains on this one (the fast
        # tokenizer releases the GIL). produce() is a pure function of its state, so a prefetched chunk is the
        # one a synchronous call would build; it is used only when asked for exactly that state.
        self._prefetch = data.prefetch
        self._pool: ThreadPoolExecutor | None = None
        self._pending: tuple[dict, Future] | None = None

    # -- iteration -------------------------------------------------------------------------------
    def __iter__(self) -> TrainStream:
        return self

    def _ensure_chunk(self) -> None:
        first_epoch = None
        while self._chunk is None or self._emitted >= len(self._chunk):
            # sft drops conversations without a target inside --seq-len: a whole pass of them would loop forever.
            first_epoch = self.epoch if first_epoch is None else first_epoch
            # Packed clm/mlm always progress (each pass adds its tokens to the carry, however short the source).
            if self.task == "sft" and self.epoch > first_epoch + 1:
                raise DataError(
                    f"data {', '.join(self.source_names)}: a whole pass yields no batch (task {self.task}: no "
                    f"conversation has an assistant token within --seq-len {self.data.seq_len})"
                )
            if self._chunk is not None:
                assert self._next_state is not None
                self._chunk_state = dict(self._next_state, weights=list(self._weights))
                self._emitted = 0
            self._chunk, self._next_state, stats = self._produce(self._chunk_state)
            if self._prefetch:
                self._start_prefetch(dict(self._next_state, weights=list(self._weights)))
            if self._emitted == 0:
                self._counters["docs"] += stats["docs"]
                self._counters["truncated"] += stats["truncated"]

    def _start_prefetch(self, state: dict) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scaling-data")
        self._pending = (state, self._pool.submit(self.chunker.produce, state))

    def _drain(self) -> tuple[dict, Future] | None:
        """Wait for a prefetch in flight: the chunker's sources must not be moved by two threads at once."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending[1].exception()  # waits; an error resurfaces when (if) that chunk is asked for
        return pending

    def _produce(self, state: dict):
        pending = self._drain()
        if pending is not None and _same_state(pending[0], state):
            return pending[1].result()
        return self.chunker.produce(state)

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._packed:
            rows, have = [], 0
            while have < self.micro_batch:
                self._ensure_chunk()
                assert self._chunk is not None and self._chunk.blocks is not None
                take = min(self.micro_batch - have, len(self._chunk) - self._emitted)
                rows.append(self._chunk.blocks[self._emitted : self._emitted + take])
                self._emitted += take
                have += take
            blocks = np.concatenate(rows)
            batch = (
                sft_packed_batch(blocks)
                if self.task == "sft"
                else packed_batch(blocks, eos=self.eos_id, cross_doc_attention=self.data.cross_doc_attention)
            )
        else:
            self._ensure_chunk()
            assert self._chunk is not None and self._chunk.batches is not None
            seqs, labels = self._chunk.batches[self._emitted]
            self._emitted += 1
            batch = padded_batch(seqs, labels, task=self.task, pad=self.pad_id)
        if self.masker is not None:
            batch["input_ids"], batch["labels"] = self.masker(
                batch["input_ids"], batch_generator(self.seed, self.dp_rank, self._batches)
            )
        self._batches += 1
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        self._counters["tokens"] += real
        self._counters["pad_tokens"] += batch["input_ids"].numel() - real
        return batch

    @property
    def _packed(self) -> bool:
        return isinstance(self.chunker, ShardChunker) or self.chunker.packed

    # -- state -----------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        done = self._chunk is not None and self._emitted >= len(self._chunk)
        state = self._next_state if done and self._next_state is not None else self._chunk_state
        return min(source["epoch"] for source in state["sources"])

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "dp_rank": self.dp_rank,
            "dp_size": self.dp_size,
            "chunk_state": copy.deepcopy(self._chunk_state),
            "emitted": self._emitted,
            "batches": self._batches,
            "weights": list(self._weights),
            "counters": dict(self._counters),
            "last_update_step": self._last_update_step,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ConfigError(
                [
                    Problem(
                        "data state",
                        "saved by an incompatible version of the data pipeline",
                        state.get("version"),
                    )
                ]
            )
        if (state["dp_rank"], state["dp_size"]) != (self.dp_rank, self.dp_size):
            raise ConfigError(
                [
                    Problem(
                        "data state",
                        f"saved by rank {state['dp_rank']}/{state['dp_size']}, loaded by {self.dp_rank}/{self.dp_size}",
                    )
                ]
            )
        self._chunk_state = copy.deepcopy(state["chunk_state"])
        self._weights = list(state["weights"])
        self._batches = state["batches"]
        self._counters = dict(state["counters"])
        self._last_update_step = state["last_update_step"]
        # Seek: rebuild the interrupted chunk from its start state, then skip what was already emitted.
        self._drain()
        self._chunk, self._next_state, _ = self.chunker.produce(self._chunk_state)
        self._emitted = state["emitted"]

    # -- reporting -------------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        total = self._counters["tokens"] + self._counters["pad_tokens"]
        out: dict[str, float] = {
            "data/pad_fraction": self._counters["pad_tokens"] / total if total else 0.0,
            "data/tokens": float(self._counters["tokens"]),
            "data/docs": float(self._counters["docs"]),
            "data/truncated": float(self._counters["truncated"]),
            "data/epoch": float(self.epoch),
        }
        state = self._next_state or self._chunk_state
        for key in ("repaired_utf8", "skipped_empty", "skipped_bad", "split_long"):
            out[f"data/{key}"] = float(sum(s.get("counts", {}).get(key, 0) for s in state["sources"]))
        if len(self.source_names) > 1:
            for name, weight in zip(self.source_names, self._weights, strict=True):
                out[f"mix/weight/{name}"] = weight
        return out

    def steps_per_epoch(self, grad_accum: int) -> int:
        if grad_accum not in self._steps_per_epoch:
            self._steps_per_epoch[grad_accum] = max(1, self._count_batches_per_epoch() // grad_accum)
        return self._steps_per_epoch[grad_accum]

    def _count_batches_per_epoch(self) -> int:
        """Micro-batches in one pass for the rank with the fewest, so every rank derives the same step count."""
        if isinstance(self.chunker, ShardChunker):
            return (self.chunker.shards.blocks // self.dp_size) // self.micro_batch
        self._drain()  # the count below uses the chunker's tokenizer
        chunker = self.chunker
        streams = _open_streams(
            [s.spec for s in chunker.streams], self.data, self.task, 0, 1, self.seed, shuffle=False
        )
        docs = np.zeros((len(streams), self.dp_size))
        tokens = np.zeros((len(streams), self.dp_size))
        budget_docs, budget_chars = self.data.chunk_docs, self.data.chunk_chars
        padded_batches = np.zeros(self.dp_size)
        for i, stream in enumerate(streams):
            open_docs, open_chars = np.zeros(self.dp_size), np.zeros(self.dp_size)
            texts: list[SourceRecord] = []
            owners: list[int] = []
            while True:
                record = stream.next_record(stop_at_epoch_end=True)
                if record is not None:
                    rank = record.index % self.dp_size
                    docs[i, rank] += 1
                    texts.append(record)
                    owners.append(rank)
                    open_docs[rank] += 1
                    open_chars[rank] += len(record.text)
                    # Mirror the chunker's budgets: each closed chunk ends with a possibly partial batch.
                    if open_docs[rank] >= budget_docs or open_chars[rank] >= budget_chars:
                        padded_batches[rank] += np.ceil(open_docs[rank] / self.micro_batch)
                        open_docs[rank] = open_chars[rank] = 0
                if self._packed and (len(texts) >= 1000 or (record is None and texts)):
                    np.add.at(tokens[i], np.asarray(owners), self._token_counts(chunker, i, texts))
                    texts, owners = [], []
                elif not self._packed:
                    texts, owners = [], []
                if record is None:
                    padded_batches += np.ceil(open_docs / self.micro_batch)
                    break
        if not self._packed:
            if len(streams) == 1:
                return int(padded_batches.min())
            return int(self._mixed_docs_per_epoch(docs) / self.micro_batch)
        if len(streams) == 1:
            return int((tokens[0] // self.data.seq_len).min() // self.micro_batch)
        weights = np.asarray(self._initial_weights)
        avg_len = tokens.sum(1) / np.maximum(docs.sum(1), 1)
        docs_needed = self._mixed_docs_per_epoch(docs)
        return int(docs_needed * float((weights * avg_len).sum()) / self.data.seq_len / self.micro_batch)

    def _token_counts(self, chunker: TextChunker, source: int, records: list[SourceRecord]) -> np.ndarray:
        """Packed tokens per record: its tokens and EOS, or a conversation's tokens (sft adds no EOS)."""
        if self.task == "sft":
            pairs = chunker.encode_conversations([(source, r) for r in records])
            return np.asarray([len(ids) for ids, _ in pairs], dtype=np.float64)
        ids = encode_texts(chunker.tokenizer, [r.text for r in records])
        return np.fromiter((len(x) + 1 for x in ids), dtype=np.float64, count=len(ids))

    def _mixed_docs_per_epoch(self, docs: np.ndarray) -> float:
        # With documents drawn from source i with probability p_i, source i is exhausted after n_i / p_i draws;
        # an epoch (every source seen once) ends when the slowest is.
        weights = np.asarray(self._initial_weights)
        return float((docs.min(axis=1) / weights).max())

    # -- dynamic mixing --------------------------------------------------------------------------
    def maybe_adapt(self, step: int, evaluate: Callable[[list[dict]], float]) -> dict[str, float] | None:
        if self.data.mix != "dynamic" or len(self.source_names) < 2 or self._probe_factory is None:
            return None
        if step <= 0 or step % self.data.mix_update_every or step == self._last_update_step:
            return None
        losses = []
        self._drain()  # probes are built with the chunker's tokenizer
        for i in range(len(self.source_names)):
            if i not in self._probes:
                self._probes[i] = self._probe_factory(i)
            losses.append(float(evaluate(self._probes[i])))
        self._weights = dynamic_update(
            self._initial_weights,
            losses,
            step_size=self.data.mix_step_size,
            max_ratio=self.data.mix_max_ratio,
        )
        self._last_update_step = step
        report = {f"mix/weight/{n}": w for n, w in zip(self.source_names, self._weights, strict=True)}
        report.update({f"mix/loss/{n}": loss for n, loss in zip(self.source_names, losses, strict=True)})
        return report


def _same_state(a: dict, b: dict) -> bool:
    try:
        return bool(a == b)
    except (ValueError, TypeError):  # array-valued states compare elementwise: treat as different
        return False


def build_train_stream(
    data: DataConfig, tokenizer, *, task: str, micro_batch: int, dp_rank: int, dp_size: int, seed: int
) -> TrainStream:
    _validate(data, task, micro_batch, dp_rank, dp_size)
    if not data.train:
        raise ConfigError([Problem("--data", "no training source given")])
    specs = [parse_spec(raw) for raw in data.train]
    ids = tokenizer_ids(tokenizer)
    packed = data.packing and task not in UNPACKED_TASKS
    plan = parse_augment(data.augment, data.synonyms, task=task)
    masker = (
        Masker(tokenizer, probability=data.mlm_probability, strategy=plan.mask_op) if task == "mlm" else None
    )
    common: dict[str, Any] = {
        "data": data,
        "task": task,
        "micro_batch": micro_batch,
        "dp_rank": dp_rank,
        "dp_size": dp_size,
        "seed": seed,
        "masker": masker,
        "pad_id": ids["pad"],
        "eos_id": ids["eos"],
    }
    packed_dirs = [s for s in specs if is_packed_dir(s.path)]
    if packed_dirs:
        if len(specs) > 1 or task in ("seq-cls", *RECORD_TASKS):
            raise ConfigError(
                [
                    Problem(
                        "--data",
                        "a preprocessed directory must be the only source, for clm or mlm",
                        packed_dirs[0].raw,
                    )
                ]
            )
        shards = PackedShards(packed_dirs[0].path, tokenizer=tokenizer, seq_len=data.seq_len)
        shard_chunker = ShardChunker(
            shards,
            seed=seed,
            dp_rank=dp_rank,
            dp_size=dp_size,
            chunk_blocks=max(micro_batch, data.chunk_docs),
        )
        return TrainStream(
            shard_chunker, weights=[1.0], source_names=[specs[0].name], probe_factory=None, **common
        )
    streams = _open_streams(specs, data, task, dp_rank, dp_size, seed, shuffle=True)
    weights = initial_weights(
        [s.weight for s in specs],
        [s.size_bytes for s in streams],
        data.mix_temperature,
        [s.raw for s in specs],
    )
    chunker = TextChunker(
        streams,
        tokenizer,
        data,
        task=task,
        micro_batch=micro_batch,
        seed=seed,
        dp_rank=dp_rank,
        augment=plan,
        packed=packed,
    )

    def probe(i: int) -> list[dict[str, torch.Tensor]]:
        # The batches a source is scored on: its eval spec when eval pairs up with train, else its own start.
        source = data.eval[i] if len(data.eval) == len(data.train) else data.train[i]
        sub = dataclasses.replace(data, train=[source], augment="", mix="static")
        single = build_train_stream(
            sub, tokenizer, task=task, micro_batch=micro_batch, dp_rank=dp_rank, dp_size=dp_size, seed=seed
        )
        return [next(single) for _ in range(data.mix_eval_batches)]

    names = _unique_names(specs)
    return TrainStream(chunker, weights=weights, source_names=names, probe_factory=probe, **common)


def _unique_names(specs: list[SourceSpec]) -> list[str]:
    names = [s.name for s in specs]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def build_eval_batches(
    data: DataConfig, tokenizer, *, task: str, micro_batch: int, dp_rank: int, dp_size: int, max_batches: int
) -> list[dict[str, torch.Tensor]]:
    """The same number of batches on every rank: the global list, dealt round-robin, cycled if short."""
    _validate(data, task, micro_batch, dp_rank, dp_size)
    if not data.eval or max_batches < 1:
        return []
    ids = tokenizer_ids(tokenizer)
    specs = [parse_spec(raw) for raw in data.eval]
    wanted = max_batches * dp_size
    plan = parse_augment(data.augment, data.synonyms, task=task)
    masker = (
        Masker(tokenizer, probability=data.mlm_probability, strategy=plan.mask_op) if task == "mlm" else None
    )
    global_batches: list[dict[str, torch.Tensor]] = []
    packed = data.packing and task not in UNPACKED_TASKS
    for spec in specs:
        if is_packed_dir(spec.path):
            shards = PackedShards(spec.path, tokenizer=tokenizer, seq_len=data.seq_len)
            for start in range(0, min(shards.blocks, wanted * micro_batch), micro_batch):
                rows = shards.gather(np.arange(start, min(start + micro_batch, shards.blocks)))
                global_batches.append(
                    packed_batch(rows, eos=ids["eos"], cross_doc_attention=data.cross_doc_attention)
                )
            continue
        if task == "sft":
            global_batches.extend(
                _sft_eval_batches(spec, data, tokenizer, micro_batch, wanted - len(global_batches))
            )
            continue
        streams = _open_streams([spec], data, task, 0, 1, 0, shuffle=False)
        chunker = TextChunker(
            streams,
            tokenizer,
            data,
            task=task,
            micro_batch=micro_batch,
            seed=0,
            dp_rank=0,
            augment=None,
            packed=packed,
            shuffle=False,
        )
        state = chunker.initial_state([1.0])
        pending: list[np.ndarray] = []
        while len(global_batches) < wanted:
            chunk, state, _ = chunker.produce(state)
            if chunk.blocks is not None:
                pending.extend(chunk.blocks)
                while len(pending) >= micro_batch and len(global_batches) < wanted:
                    global_batches.append(
                        packed_batch(
                            np.stack(pending[:micro_batch]),
                            eos=ids["eos"],
                            cross_doc_attention=data.cross_doc_attention,
                        )
                    )
                    pending = pending[micro_batch:]
            else:
                global_batches.extend(
                    padded_batch(s, lab, task=task, pad=ids["pad"]) for s, lab in (chunk.batches or [])
                )
            if state["sources"][0]["epoch"] > 0:
                break
        if chunk.blocks is not None and len(global_batches) < wanted and (pending or state["carry"]):
            global_batches.append(_tail_batch(pending, state["carry"], ids, data.seq_len))
    global_batches = global_batches[:wanted]
    if masker is not None:
        for i, batch in enumerate(global_batches):
            batch["input_ids"], batch["labels"] = masker(batch["input_ids"], batch_generator(0, 0, i))
    if not global_batches:
        return []
    per_rank = max(1, len(global_batches) // dp_size)
    return [global_batches[(dp_rank + i * dp_size) % len(global_batches)] for i in range(per_rank)]


def _sft_eval_batches(
    spec: SourceSpec, data: DataConfig, tokenizer, micro_batch: int, wanted: int
) -> list[dict[str, torch.Tensor]]:
    """Held-out conversations, one pass, in order; the last partial block is padded with positions restarted
    at the padding and no targets there, so every held-out target counts and none attends across."""
    streams = _open_streams([spec], data, "sft", 0, 1, 0, shuffle=False)
    chunker = TextChunker(
        streams,
        tokenizer,
        data,
        task="sft",
        micro_batch=micro_batch,
        seed=0,
        dp_rank=0,
        augment=None,
        packed=data.packing,
        shuffle=False,
    )
    state = chunker.initial_state([1.0])
    blocks: list[np.ndarray] = []
    batches: list[dict[str, torch.Tensor]] = []
    pad = tokenizer_ids(tokenizer)["pad"]
    while len(batches) + len(blocks) // micro_batch < wanted:
        chunk, state, _ = chunker.produce(state)
        if chunk.blocks is not None:
            blocks.extend(chunk.blocks)
        else:
            batches.extend(padded_batch(s, lab, task="sft", pad=pad) for s, lab in (chunk.batches or []))
        if state["sources"][0]["epoch"] > 0:
            break
    if data.packing and state["carry"] and state["carry"][0]:
        carry = np.asarray(state["carry"], dtype=np.int64)
        tail = np.zeros((3, data.seq_len), dtype=np.int64)
        tail[0], tail[1] = pad, -100
        tail[:, : carry.shape[1]] = carry
        tail[2, carry.shape[1]] = 1
        if ((tail[1, 1:] != -100) & (tail[2, 1:] == 0)).any():  # a batch without targets has no mean loss
            blocks.append(tail)
    for start in range(0, len(blocks), micro_batch):
        batches.append(sft_packed_batch(np.stack(blocks[start : start + micro_batch])))
    return batches[:wanted]


def _tail_batch(
    pending: list[np.ndarray], carry: list[int], ids: dict[str, int], seq_len: int
) -> dict[str, torch.Tensor]:
    """The eval set's last partial block, padded (masked out of attention and loss) so no eval token is lost."""
    seqs = [np.asarray(b, dtype=np.int64) for b in pending]
    if carry:
        seqs.append(np.asarray(carry, dtype=np.int64))
    return padded_batch(seqs, [None] * len(seqs), task="clm", pad=ids["pad"])
