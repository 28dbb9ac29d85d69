"""Source specs and record readers that resume from a byte offset or row index, never from the start.

A reader turns one file into records `(text, label)` and reports, after each record, the position right
behind it, so a stream can save where it is in O(1) and seek back there on resume.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.data.config import DataConfig
from scaling.errors import DataError

TEXT_UNITS = ("line", "paragraph", "file")
TEXT_EXTS = (".txt", ".text", ".md")
JSONL_EXTS = (".jsonl", ".json", ".ndjson")
TABLE_EXTS = (".csv", ".tsv")
PARQUET_EXTS = (".parquet",)
FILE_EXTS = TEXT_EXTS + JSONL_EXTS + TABLE_EXTS + PARQUET_EXTS
PACKED_MANIFEST = "manifest.json"
HF_PREFIX = "hf:"
# Bytes read per step of a long line: long enough to be fast, short enough that a 2 GB line never sits in memory.
_READ_STEP = 1 << 20


@dataclass(frozen=True)
class SourceSpec:
    """One `--data` argument, parsed: `[hf:]PATH|GLOB|DIR[:field][@weight]`."""

    raw: str
    """The spec exactly as the user gave it (used in every error message)."""
    path: str
    """Path, glob or directory."""
    field: str | None = None
    """JSONL field / CSV column of the text, or the text unit (line, paragraph, file) of plain text."""
    weight: float | None = None
    """Explicit mixing weight; None lets the temperature rule use the source size."""
    hf: bool = False
    """Read through HF `datasets` (load_dataset/load_from_disk, streaming) instead of our own readers."""

    @property
    def name(self) -> str:
        return Path(self.path.rstrip("/")).name or self.raw


def parse_spec(raw: str) -> SourceSpec:
    rest = raw.strip()
    hf = rest.startswith(HF_PREFIX)
    if hf:
        rest = rest[len(HF_PREFIX) :]
    weight = None
    if "@" in rest:
        head, _, tail = rest.rpartition("@")
        try:
            weight = float(tail)
        except ValueError:
            head = rest
        else:
            if not weight > 0:
                raise DataError(f"data source {raw!r}: weight must be > 0, got {tail}")
        rest = head
    field_name = None
    if ":" in rest:
        head, _, tail = rest.rpartition(":")
        if tail and "/" not in tail and head:
            rest, field_name = head, tail
    if not rest:
        raise DataError(f"data source {raw!r}: no path given")
    return SourceSpec(raw=raw, path=rest, field=field_name, weight=weight, hf=hf)


def is_packed_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, PACKED_MANIFEST))


def expand_files(spec: SourceSpec) -> list[str]:
    """The sorted files of a spec (glob, directory or file); a DataError naming the spec if there are none."""
    if glob.has_magic(spec.path):
        matches = sorted(glob.glob(spec.path, recursive=True))
    elif os.path.isdir(spec.path):
        matches = sorted(str(p) for p in Path(spec.path).rglob("*"))
    elif os.path.exists(spec.path):
        matches = [spec.path]
    else:
        raise DataError(f"data source {spec.raw!r}: {spec.path} does not exist")
    files = [m for m in matches if os.path.isfile(m) and m.lower().endswith(FILE_EXTS)]
    if not files:
        raise DataError(
            f"data source {spec.raw!r}: no readable files (extensions {', '.join(FILE_EXTS)}) at {spec.path}"
        )
    return files


@dataclass
class ReadCounts:
    """Records a reader repaired or dropped; kept in the stream state so resume does not double-count."""

    repaired_utf8: int = 0
    """Records whose undecodable bytes (in the source's encoding, utf-8 by default) were replaced by U+FFFD."""
    skipped_empty: int = 0
    """Empty or whitespace-only records."""
    skipped_bad: int = 0
    """Records that could not be parsed (bad JSON, missing field or column, merged CSV rows, bad label)."""
    split_long: int = 0
    """Extra pieces created by splitting documents longer than max_doc_chars."""
    read: int = 0
    """Non-empty records (lines of plain text) examined, good or bad: the base of the bad share."""

    @property
    def bad(self) -> int:
        return self.repaired_utf8 + self.skipped_bad

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ReadLimits:
    """How strictly sources are read: the data section's encoding and bounds (its defaults are theirs)."""

    encoding: str = DataConfig.encoding
    max_bad_fraction: float = DataConfig.max_bad_fraction
    max_record_bytes: int = DataConfig.max_record_bytes

    @classmethod
    def of(cls, data: DataConfig) -> ReadLimits:
        return cls(data.encoding, data.max_bad_fraction, data.max_record_bytes)


@dataclass(frozen=True)
class BadRecord:
    """Where the first bad record of a read is, and what is wrong with it."""

    path: str
    offset: int
    """Byte offset in the file (a row number for Parquet)."""
    why: str

    def where(self) -> str:
        if self.path.lower().endswith(PARQUET_EXTS):
            return f"{self.path} row {self.offset}"
        return f"{self.path}:{line_number(self.path, self.offset)} (byte offset {self.offset})"


@dataclass
class ReaderOptions:
    """What every reader needs besides the file."""

    field: str | None
    label_column: str | None
    max_doc_chars: int
    records: bool = False
    """Yield each JSONL line / Parquet row whole, as JSON text (chat SFT parses the conversation itself)."""
    # dataclasses.field: the bare name would be this class's `field` attribute
    counts: ReadCounts = dataclasses.field(default_factory=ReadCounts)
    limits: ReadLimits = dataclasses.field(default_factory=ReadLimits)
    first_bad: BadRecord | None = None
    """The first bad record this process read (not kept in the stream state)."""

    def decode(self, raw: bytes, path: str, start: int) -> str:
        """`raw` (which starts at byte `start` of `path`) as text; undecodable bytes replaced and counted."""
        try:
            return raw.decode(self.limits.encoding)
        except UnicodeDecodeError as err:
            self.counts.repaired_utf8 += 1
            self._note(path, start + err.start, f"bytes that are not {self.limits.encoding} ({err.reason})")
            return raw.decode(self.limits.encoding, errors="replace")

    def bad(self, path: str, offset: int, why: str, records: int = 1) -> None:
        self.counts.skipped_bad += records
        self._note(path, offset, why)

    def _note(self, path: str, offset: int, why: str) -> None:
        if self.first_bad is None:
            self.first_bad = BadRecord(path, offset, why)


Record = tuple[str, int | None]


def line_number(path: str, offset: int) -> int:
    """The 1-based line of byte `offset` (read in steps: only error messages ask)."""
    lines, done = 1, 0
    with open(path, "rb") as f:
        while done < offset:
            block = f.read(min(_READ_STEP, offset - done))
            if not block:
                break
            lines += block.count(b"\n")
            done += len(block)
    return lines


def _utf8_safe_cut(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 sequence."""
    end = len(data)
    back = 0
    while back < 4 and end - back - 1 >= 0 and (data[end - back - 1] & 0xC0) == 0x80:
        back += 1
    lead_pos = end - back - 1
    if lead_pos < 0:
        return end
    lead = data[lead_pos]
    need = (
        1
        if lead < 0x80
        else 2
        if lead >> 5 == 0b110
        else 3
        if lead >> 4 == 0b1110
        else 4
        if lead >> 3 == 0b11110
        else 1
    )
    return end if back + 1 >= need else lead_pos


def _read_lines(f: io.BufferedReader, offset: int, max_bytes: int) -> Iterator[tuple[bytes, int, bool]]:
    """Lines (without the newline) from `offset`, each at most max_bytes, with the offset behind them.

    The flag says whether the piece continues the previous one (a split of a long line).
    """
    f.seek(offset)
    continued = False
    while True:
        line = f.readline(max_bytes)
        if not line:
            return
        if line.endswith(b"\n"):
            offset += len(line)
            if continued and not line.rstrip(b"\r\n"):
                continued = False  # the newline right after a split piece ends it; no empty record
                continue
            yield line.rstrip(b"\r\n"), offset, continued
            continued = False
            continue
        cut = _utf8_safe_cut(line) if len(line) == max_bytes else len(line)
        if cut < len(line):
            f.seek(offset + cut)
            line = line[:cut]
        offset += len(line)
        yield line, offset, continued
        continued = True


def _whole_lines(
    f: io.BufferedReader, offset: int, path: str, limit: int
) -> Iterator[tuple[bytes, int, int]]:
    """Lines (without the newline) from `offset` with their start and end offsets; a line longer than `limit`
    bytes is refused, not held: one 198 MB JSONL line read whole peaked at 1.34 GB."""
    f.seek(offset)
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            raise DataError(
                f"{path}:{line_number(path, offset)}: a record longer than --max-record-bytes {limit} (byte "
                f"offset {offset}); split it into smaller records, or raise --max-record-bytes"
            )
        yield line.rstrip(b"\r\n"), offset, offset + len(line)
        offset += len(line)


def _text_lines(path: str, offset: int, opts: ReaderOptions) -> Iterator[tuple[Record, int]]:
    with open(path, "rb") as f:
        start = offset
        for raw, pos, continued in _read_lines(f, offset, opts.max_doc_chars):
            if continued:
                opts.counts.split_long += 1
            text = opts.decode(raw, path, start)
            start = pos
            if not text.strip():
                opts.counts.skipped_empty += 1
                continue
            opts.counts.read += 1
            yield (text, None), pos


def _text_paragraphs(path: str, offset: int, opts: ReaderOptions) -> Iterator[tuple[Record, int]]:
    with open(path, "rb") as f:
        lines: list[str] = []
        size = 0
        start = offset
        for raw, pos, _ in _read_lines(f, offset, opts.max_doc_chars):
            text = opts.decode(raw, path, start)
            start = pos
            if text.strip():
                opts.counts.read += 1
                lines.append(text)
                size += len(text)
                if size < opts.max_doc_chars:
                    continue
                opts.counts.split_long += 1
            if lines:
                yield ("\n".join(lines), None), pos
                lines, size = [], 0
        if lines:
            yield ("\n".join(lines), None), f.tell()


def _text_file(path: str, offset: int, opts: ReaderOptions) -> Iterator[tuple[Record, int]]:
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            data = f.read(opts.max_doc_chars)
            if not data:
                return
            cut = _utf8_safe_cut(data)
            if cut < len(data):
                f.seek(offset + cut)
                data = data[:cut]
            start, offset = offset, offset + len(data)
            if f.peek(1):
                opts.counts.split_long += 1
            text = opts.decode(data, path, start)
            if text.strip():
                opts.counts.read += 1
                yield (text, None), offset
            else:
                opts.counts.skipped_empty += 1


def _parse_label(value: Any, opts: ReaderOptions, path: str, offset: int) -> tuple[bool, int | None]:
    if opts.label_column is None:
        return True, None
    try:
        return True, int(value)
    except (TypeError, ValueError):
        opts.bad(path, offset, f"label {opts.label_column!r} = {value!r} is not an integer")
        return False, None


def _jsonl(path: str, offset: int, opts: ReaderOptions) -> Iterator[tuple[Record, int]]:
    key = opts.field or "text"
    with open(path, "rb") as f:
        for raw, start, pos in _whole_lines(f, offset, path, opts.limits.max_record_bytes):
            if not raw.strip():
                opts.counts.skipped_empty += 1
                continue
            opts.counts.read += 1
            line = opts.decode(raw, path, start)
            if opts.records:
                yield (line, None), pos
                continue
            try:
                obj = json.loads(line)
            except ValueError as err:
                opts.bad(path, start, f"not valid JSON ({err})")
                continue
            if not isinstance(obj, dict) or key not in obj:
                opts.bad(
                    path, start, f"no field {key!r}" + ("" if isinstance(obj, dict) else " (not an object)")
                )
                continue
            text = obj[key]
            if not isinstance(text, str):
                opts.bad(path, start, f"field {key!r} is {type(text).__name__}, not a string")
                continue
            if not text.strip():
                opts.counts.skipped_empty += 1
                continue
            ok, label = _parse_label(
                obj.get(opts.label_column) if opts.label_column else None, opts, path, start
            )
            if ok:
                yield from _split_long((text, label), pos, opts)


def _split_long(record: Record, pos: int, opts: ReaderOptions) -> Iterator[tuple[Record, int]]:
    text, label = record
    if len(text) <= opts.max_doc_chars or label is not None:
        yield record, pos
        return
    # Every piece carries the same position: a resume lands behind the whole record, as for one piece.
    for start in range(0, len(text), opts.max_doc_chars):
        if start:
            opts.counts.split_long += 1
        yield (text[start : start + opts.max_doc_chars], None), pos


def _table(path: str, offset: int, opts: ReaderOptions) -> Iterator[tuple[Record, int]]:
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    limit = opts.limits.max_record_bytes
    with open(path, "rb") as f:
        header_raw, _, header_end = next(_whole_lines(f, 0, path, limit), (b"", 0, 0))
        header = next(csv.reader([opts.decode(header_raw, path, 0)], delimiter=delimiter), [])
        text_col = _pick_column(header, opts, path)
        label_col = None
        if opts.label_column is not None:
            if opts.label_column not in header:
                raise DataError(f"{path}: no label column {opts.label_column!r} (columns: {header})")
            label_col = header.index(opts.label_column)
        position = max(offset, header_end)
        consumed = [position]
        row_lines: list[str] = []

        def lines() -> Iterator[str]:
            # csv pulls exactly the lines one row needs, so the running offset is the row's end. The newline
            # goes with the line: a quoted field spanning lines keeps it.
            for raw, start, end in _whole_lines(f, position, path, limit):
                consumed[0] = end
                row_lines.append(opts.decode(raw, path, start))
                yield row_lines[-1] + "\n"

        tsv = delimiter == "\t"
        rows = csv.reader(lines(), delimiter=delimiter, quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        while True:
            start = consumed[0]
            row_lines.clear()
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as err:
                raise DataError(
                    f"{path}:{line_number(path, start)}: {err} in the row starting there (byte offset {start}): "
                    'a quote (") that opens a field and never closes, probably a stray one; quote that field '
                    'and double the quotes inside it ("")'
                ) from None
            if not row or not any(cell.strip() for cell in row):
                opts.counts.skipped_empty += 1
                continue
            if len(row_lines) > 1 and _merged_rows(row_lines, delimiter, len(header), label_col):
                opts.counts.read += len(row_lines)
                opts.bad(
                    path,
                    start,
                    f'{len(row_lines)} lines read as one row: a quote (") opens a field that spans rows, '
                    "probably a stray one",
                    records=len(row_lines),
                )
                continue
            opts.counts.read += 1
            if len(row) != len(header):
                opts.bad(path, start, f"{len(row)} field(s) where the header has {len(header)}")
                continue
            text = row[text_col]
            if not text.strip():
                opts.counts.skipped_empty += 1
                continue
            ok, label = _parse_label(row[label_col] if label_col is not None else None, opts, path, start)
            if ok:
                yield from _split_long((text, label), consumed[0], opts)


def _merged_rows(lines: list[str], delimiter: str, width: int, label_col: int | None) -> bool:
    """Whether a row read over several lines swallowed rows of its own, told by field counts: a line inside it
    (not the last, where the quote closes) that alone has the header's field count, and, with a label column,
    an integer label; with one, also the first line without its quotes (two rows merged: `"text,1` then
    `more",0`). A quoted field may span lines; its lines rarely look like rows. With one column every line
    does: nothing to tell them apart by."""
    if width < 2:
        return False
    candidates = lines[1:-1] + ([lines[0].replace('"', "")] if label_col is not None else [])
    for line in candidates:
        cells = next(csv.reader([line], delimiter=delimiter), [])
        if len(cells) == width and (label_col is None or cells[label_col].strip().lstrip("-").isdigit()):
            return True
    return False


def _pick_column(header: list[str], opts: ReaderOptions, path: str) -> int:
    if opts.field is not None:
        if opts.field not in header:
            raise DataError(f"{path}: no column {opts.field!r} (columns: {header})")
        return header.index(opts.field)
    for name in ("text", "sentence", "content", "document"):
        if name in header:
            return header.index(name)
    others = [i for i, name in enumerate(header) if name != opts.label_column]
    if not others:
        raise DataError(f"{path}: no text column (columns: {header}); name one with PATH:column")
    return others[0]


def _parquet(path: str, offset: int, opts: ReaderOptions) -> Iterator[tuple[Record, int]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if opts.records:
        yield from _parquet_rows(pf, offset)
        return
    key = opts.field or ("text" if "text" in names else None)
    if key is None or key not in names:
        raise DataError(f"{path}: no column {opts.field or 'text'!r} (columns: {names})")
    columns = [key]
    if opts.label_column is not None:
        if opts.label_column not in names:
            raise DataError(f"{path}: no label column {opts.label_column!r} (columns: {names})")
        columns.append(opts.label_column)
    # Seek: skip whole row groups by metadata, then slice inside the first one read.
    meta = pf.metadata
    start_row, group = 0, 0
    while group < meta.num_row_groups and start_row + meta.row_group(group).num_rows <= offset:
        start_row += meta.row_group(group).num_rows
        group += 1
    row = start_row
    for g in range(group, meta.num_row_groups):
        table = pf.read_row_group(g, columns=columns)
        texts = table.column(key).to_pylist()
        labels = table.column(opts.label_column).to_pylist() if opts.label_column else None
        for i, text in enumerate(texts):
            row += 1
            if row <= offset:
                continue
            if not isinstance(text, str) or not text.strip():
                opts.counts.skipped_empty += 1
                continue
            opts.counts.read += 1
            ok, label = _parse_label(labels[i] if labels is not None else None, opts, path, row)
            if ok:
                yield from _split_long((text, label), row, opts)


def _parquet_rows(pf, offset: int) -> Iterator[tuple[Record, int]]:
    row = 0
    for g in range(pf.metadata.num_row_groups):
        size = pf.metadata.row_group(g).num_rows
        if row + size <= offset:
            row += size
            continue
        for values in pf.read_row_group(g).to_pylist():
            row += 1
            if row > offset:
                yield (json.dumps(values), None), row


def file_reader(path: str, spec: SourceSpec, *, records: bool = False):
    lower = path.lower()
    if records and not lower.endswith(JSONL_EXTS + PARQUET_EXTS):
        raise DataError(f"data source {spec.raw!r}: conversations are read from JSONL or Parquet, not {path}")
    if lower.endswith(TEXT_EXTS):
        unit = spec.field or "line"
        if unit not in TEXT_UNITS:
            raise DataError(f"data source {spec.raw!r}: text unit must be one of {TEXT_UNITS}, got {unit!r}")
        return {"line": _text_lines, "paragraph": _text_paragraphs, "file": _text_file}[unit]
    if lower.endswith(JSONL_EXTS):
        return _jsonl
    if lower.endswith(TABLE_EXTS):
        return _table
    if lower.endswith(PARQUET_EXTS):
        return _parquet
    raise DataError(f"data source {spec.raw!r}: unsupported file type {path}")
