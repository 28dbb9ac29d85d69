"""One source as an endless, rank-sharded record stream whose position is a few integers.

Sharding is by record: record i of a pass goes to rank i % dp_size, so ranks read disjoint shares that
together cover every record once per pass, whatever the number or size of files. Each rank parses the
whole source (cheap) but tokenizes and augments only its own share (the expensive part).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from scaling.data.sources import (
    ReadCounts,
    ReaderOptions,
    ReadLimits,
    SourceSpec,
    expand_files,
    file_reader,
    line_number,
)
from scaling.errors import DataError

CHECK_EVERY = 10_000
"""Records between two checks of a stream's bad share (also checked at the end of each file)."""


@dataclass(frozen=True)
class SourceRecord:
    """A record of this rank, with the coordinates that seed its augmentation."""

    text: str
    label: int | None
    epoch: int
    index: int
    """Index of the record within its pass over the source (global across ranks)."""


class RecordStream:
    """Endless iterator over this rank's records of one source; `state()` is O(1) and resumes by seeking."""

    def __init__(
        self,
        spec: SourceSpec,
        *,
        label_column: str | None,
        max_doc_chars: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        shuffle_files: bool = True,
        records: bool = False,
        limits: ReadLimits | None = None,
    ) -> None:
        self.spec = spec
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.shuffle_files = shuffle_files
        self.options = ReaderOptions(
            field=spec.field,
            label_column=label_column,
            max_doc_chars=max_doc_chars,
            records=records,
            limits=limits or ReadLimits(),
        )
        self.files = expand_files(spec)
        self.epoch = 0
        self._file_pos = 0
        self._offset = 0
        self._record_index = 0
        self._iter: Iterator[tuple[tuple[str, int | None], int]] | None = None
        self._path = ""
        """The file `_iter` reads."""

    @property
    def size_bytes(self) -> int:
        return sum(os.path.getsize(f) for f in self.files)

    @property
    def counts(self) -> ReadCounts:
        return self.options.counts

    def _file_order(self, epoch: int) -> list[str]:
        if not self.shuffle_files or len(self.files) == 1:
            return self.files
        order = np.random.default_rng([self.seed, epoch, 7]).permutation(len(self.files))
        return [self.files[i] for i in order]

    def state(self) -> dict:
        return {
            "epoch": self.epoch,
            "file": self._file_pos,
            "offset": self._offset,
            "record": self._record_index,
            "counts": self.counts.as_dict(),
        }

    def load_state(self, state: dict) -> None:
        self.epoch, self._file_pos = state["epoch"], state["file"]
        self._offset, self._record_index = state["offset"], state["record"]
        self.options.counts = ReadCounts(**state["counts"])
        self._iter = None

    def next_record(self, *, stop_at_epoch_end: bool = False) -> SourceRecord | None:
        """This rank's next record; None at the end of a pass when stop_at_epoch_end (the next call starts the next)."""
        while True:
            if self._file_pos >= len(self.files):
                if self._record_index < self.dp_size:
                    what = "no records" if self._record_index == 0 else f"only {self._record_index} records"
                    raise DataError(
                        f"data source {self.spec.raw!r}: {what} for {self.dp_size} data-parallel rank(s) "
                        "(empty files or every record skipped)"
                    )
                self.epoch += 1
                self._file_pos = self._offset = self._record_index = 0
                if stop_at_epoch_end:
                    return None
            if self._iter is None:
                self._path = path = self._file_order(self.epoch)[self._file_pos]
                self._iter = file_reader(path, self.spec, records=self.options.records)(
                    path, self._offset, self.options
                )
            while (item := self._next_of(self._path)) is not None:
                (text, label), offset = item
                self._offset = offset
                index = self._record_index
                self._record_index += 1
                if self.counts.read % CHECK_EVERY == 0:
                    self.check_bad_share()
                if index % self.dp_size == self.dp_rank:
                    return SourceRecord(text, label, self.epoch, index)
            self._iter = None
            self._file_pos += 1
            self._offset = 0
            self.check_bad_share()

    def _next_of(self, path: str) -> tuple[tuple[str, int | None], int] | None:
        """The open reader's next record (None at the file's end); an error it raises names the file and the
        record it was reading. Not a wrapping generator: abandoning one would close the reader with it."""
        assert self._iter is not None
        try:
            return next(self._iter)
        except StopIteration:
            return None
        except DataError:
            raise
        except (OSError, ValueError, EOFError, ArithmeticError, LookupError) as err:
            # csv.Error, pyarrow's ArrowInvalid (a ValueError), a file gone or truncated under the reader
            where = f"{path}:{line_number(path, self._offset)}" if os.path.isfile(path) else path
            raise DataError(
                f"data source {self.spec.raw!r}: {where}: cannot read the record after byte offset "
                f"{self._offset}: {type(err).__name__}: {err}"
            ) from None

    def check_bad_share(self) -> None:
        """Stop when more than --max-bad-fraction of the records read were bad (the launch-time scan sees a
        file's head only; the same limit holds for the rest, every rank reaching it at the same record)."""
        counts, limit = self.counts, self.options.limits.max_bad_fraction
        if counts.bad and counts.bad > limit * counts.read:
            raise DataError(bad_share_message(self.options, self.spec.raw))


class HFRecordStream(RecordStream):
    """A source read through HF `datasets` streaming; its position is the IterableDataset's own state_dict."""

    def __init__(
        self,
        spec: SourceSpec,
        *,
        label_column: str | None,
        max_doc_chars: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        records: bool = False,
        limits: ReadLimits | None = None,
    ) -> None:
        self.spec = spec
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.options = ReaderOptions(
            field=spec.field,
            label_column=label_column,
            max_doc_chars=max_doc_chars,
            records=records,
            limits=limits or ReadLimits(),
        )
        self.files = [spec.path] if os.path.exists(spec.path) else []
        if not self.files:
            raise DataError(f"data source {spec.raw!r}: {spec.path} does not exist")
        self.dataset = _load_hf_streaming(spec)
        self.epoch = 0
        self._record_index = 0
        # its own name: the base class's `_iter` yields (record, offset) pairs, this one dataset examples
        self._examples: Iterator[dict[str, Any]] | None = None
        self._ds_state: dict | None = None

    @property
    def size_bytes(self) -> int:
        root = self.spec.path
        if os.path.isfile(root):
            return os.path.getsize(root)
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)

    def state(self) -> dict:
        # The dataset's state is taken only here (chunk boundaries), not per record: it is a deep copy.
        ds_state = self.dataset.state_dict() if self._examples is not None else self._ds_state
        return {
            "epoch": self.epoch,
            "record": self._record_index,
            "dataset": ds_state,
            "counts": self.counts.as_dict(),
        }

    def load_state(self, state: dict) -> None:
        self.epoch, self._record_index = state["epoch"], state["record"]
        self._ds_state = state["dataset"]
        self.options.counts = ReadCounts(**state["counts"])
        self._examples = None

    def next_record(self, *, stop_at_epoch_end: bool = False) -> SourceRecord | None:
        key = self.spec.field or "text"
        label_key = self.options.label_column
        while True:
            if self._examples is None:
                if self._ds_state is not None:
                    self.dataset.load_state_dict(self._ds_state)
                self._examples = iter(self.dataset)
            for example in self._examples:
                text = json.dumps(example, default=str) if self.options.records else example.get(key)
                if not isinstance(text, str) or not text.strip():
                    self.counts.skipped_empty += 1
                    continue
                label = None
                if label_key is not None:
                    try:
                        label = int(example[label_key])
                    except (KeyError, TypeError, ValueError):
                        self.counts.skipped_bad += 1
                        continue
                index = self._record_index
                self._record_index += 1
                if index % self.dp_size == self.dp_rank:
                    # A whole record is JSON: cutting it would break it, and a conversation is not split.
                    kept = text if self.options.records else text[: self.options.max_doc_chars]
                    return SourceRecord(kept, label, self.epoch, index)
            if self._record_index < self.dp_size:
                raise DataError(f"data source {self.spec.raw!r}: fewer records than {self.dp_size} rank(s)")
            self.epoch += 1
            self._record_index = 0
            self._examples = None
            self._ds_state = None
            self.dataset = _load_hf_streaming(self.spec)
            if stop_at_epoch_end:
                return None


def _load_hf_streaming(spec: SourceSpec):
    import datasets

    path = spec.path
    try:
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "state.json")):
            loaded = datasets.load_from_disk(path)
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
            return loaded.to_iterable_dataset()
        if os.path.isfile(path):
            builder = {
                ".jsonl": "json",
                ".json": "json",
                ".csv": "csv",
                ".parquet": "parquet",
                ".txt": "text",
            }
            ext = os.path.splitext(path)[1].lower()
            if ext not in builder:
                raise DataError(f"data source {spec.raw!r}: datasets cannot read {ext} files")
            return datasets.load_dataset(builder[ext], data_files=path, split="train", streaming=True)
        return datasets.load_dataset(path, split="train", streaming=True)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types for unreadable input; all mean the same to a user
        raise DataError(f"data source {spec.raw!r}: datasets could not load {path}: {e}") from e


def open_record_stream(
    spec: SourceSpec,
    *,
    label_column: str | None,
    max_doc_chars: int,
    dp_rank: int,
    dp_size: int,
    seed: int,
    records: bool = False,
    limits: ReadLimits | None = None,
) -> RecordStream:
    """`records`: yield whole records as JSON text (chat SFT), not a text field. `limits`: the data section's
    encoding and bounds (default: its defaults)."""
    cls = HFRecordStream if spec.hf else RecordStream
    return cls(
        spec,
        records=records,
        limits=limits,
        label_column=label_column,
        max_doc_chars=max_doc_chars,
        dp_rank=dp_rank,
        dp_size=dp_size,
        seed=seed,
    )


def bad_share_message(options: ReaderOptions, raw: str) -> str:
    """The error (or, below the limit, the notice) about a read's bad records: how many, the first, the fix."""
    counts, limits = options.counts, options.limits
    share = counts.bad / max(1, counts.read)
    first = options.first_bad
    where = f"; the first at {first.where()}: {first.why}" if first is not None else ""
    encoding = (
        f" (read as {limits.encoding}: --encoding names another)" if counts.repaired_utf8 and first else ""
    )
    return (
        f"data source {raw!r}: {counts.bad} of {counts.read} records read are bad ({share:.1%}; "
        f"--max-bad-fraction {limits.max_bad_fraction:g}){where}{encoding}"
    )
