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
    """Records whose invalid UTF-8 bytes were replaced by U+FFFD."""
    skipped_empty: int = 0
    """Empty or whitespace-only records."""
    skipped_bad: int = 0
    """Records that could not be parsed (bad JSON, missing field, bad label)."""
    split_long: int = 0
    """Extra pieces created by splitting documents longer than max_doc_chars."""

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


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


Record = tuple[str, int | None]


def _decode(raw: bytes, counts: ReadCounts) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        counts.repaired_utf8 += 1
        return raw.decode("utf-8", errors="replace")


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


def _text_lines(path: str, offset: int, opts: ReaderOptions) -> Iterator[tuple[Record, int]]:
    with open(path, "rb") as f:
        for raw, pos, continued in _read_lines(f, offset, opts.max_doc_chars):
            if continued:
                opts.counts.split_long += 1
            text = _decode(raw, opts.counts)
            if not text.strip():
                opts.counts.skipped_empty += 1
                continue
            yield (text, None), pos


def _text_paragraphs(path: str, offset: int, opts: ReaderOptions) -> Iterator[tuple[Record, int]]:
    with open(path, "rb") as f:
        lines: list[str] = []
        size = 0
        for raw, pos, _ in _read_lines(f, offset, opts.max_doc_chars):
            text = _decode(raw, opts.counts)
            if text.strip():
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
            offset += len(data)
            if f.peek(1):
                opts.counts.split_long += 1
            text = _decode(data, opts.counts)
            if text.strip():
                yield (text, None), offset
            else:
                opts.counts.skipped_empty += 1


def _parse_label(value: Any, opts: ReaderOptions) -> tuple[bool, int | None]:
    if opts.label_column is None:
        return True, None
    try:
        return True, int(value)
    except (TypeError, ValueError):
        opts.counts.skipped_bad += 1
        return False, None


def _jsonl(path: str, offset: int, opts: ReaderOptions) -> Iterator[tuple[Record, int]]:
    key = opts.field or "text"
    with open(path, "rb") as f:
        for raw, pos, continued in _read_lines(f, offset, 1 << 62):
            del continued
            if not raw.strip():
                opts.counts.skipped_empty += 1
                continue
            if opts.records:
                yield (_decode(raw, opts.counts), None), pos
                continue
            try:
                obj = json.loads(_decode(raw, opts.counts))
                text = obj[key]
            except (ValueError, KeyError, TypeError):
                opts.counts.skipped_bad += 1
                continue
            if not isinstance(text, str) or not text.strip():
                opts.counts.skipped_empty += 1
                continue
            ok, label = _parse_label(obj.get(opts.label_column) if opts.label_column else None, opts)
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
    with open(path, "rb") as f:
        header_raw = f.readline()
        header = next(csv.reader([_decode(header_raw, opts.counts).rstrip("\r\n")], delimiter=delimiter), [])
        text_col = _pick_column(header, opts, path)
        label_col = None
        if opts.label_column is not None:
            if opts.label_column not in header:
                raise DataError(f"{path}: no label column {opts.label_column!r} (columns: {header})")
            label_col = header.index(opts.label_column)
        position = max(offset, len(header_raw))
        consumed = [position]

        def lines() -> Iterator[str]:
            # csv pulls exactly the lines one row needs, so the running offset is the row's end.
            for raw, pos, _ in _read_lines(f, position, 1 << 62):
                consumed[0] = pos
                yield _decode(raw, opts.counts)

        tsv = delimiter == "\t"
        for row in csv.reader(
            lines(), delimiter=delimiter, quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
        ):
            if not row or not any(cell.strip() for cell in row):
                opts.counts.skipped_empty += 1
                continue
            if len(row) != len(header):
                opts.counts.skipped_bad += 1
                continue
            text = row[text_col]
            if not text.strip():
                opts.counts.skipped_empty += 1
                continue
            ok, label = _parse_label(row[label_col] if label_col is not None else None, opts)
            if ok:
                yield from _split_long((text, label), consumed[0], opts)


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
            ok, label = _parse_label(labels[i] if labels is not None else None, opts)
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
