"""A small, self-contained reader of data specs for calibration and evaluation.

The streaming pipeline in `scaling.data` serves training; compression needs a few hundred documents at most,
so this reader loads them eagerly and keeps no state. Specs:

- `file.txt`                 one document per non-empty line
- `file.jsonl[:field]`       field defaults to `text`
- `file.csv|tsv[:column]`    column defaults to `text`; labels come from `label_column`
- `builtin:pydoc`            CPython's pydoc topic texts (ships with Python; handy for offline evaluation)
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from scaling.errors import DataError

BUILTIN = "builtin:pydoc"


@dataclass(frozen=True)
class Documents:
    """Documents read from one spec, with labels when a label column was asked for and present."""

    texts: list[str]
    """Document texts in file order."""
    labels: list[int] | None
    """Integer class labels aligned with `texts`; None when not requested."""
    spec: str
    """The spec as given, for reports."""


def split_spec(spec: str) -> tuple[Path, str | None]:
    """`path[:field]` -> (path, field). An existing path wins, so file names with colons still work."""
    if Path(spec).exists():
        return Path(spec), None
    head, sep, tail = spec.rpartition(":")
    if sep and head and Path(head).exists():
        return Path(head), tail or None
    raise DataError(f"data spec {spec!r}: no such file (expected PATH, PATH:field or {BUILTIN})")


def read_documents(spec: str, *, limit: int | None = None, label_column: str | None = None) -> Documents:
    """Read up to `limit` documents; with `label_column`, also their labels (required then)."""
    if spec == BUILTIN:
        texts = _pydoc_texts()
        if label_column:
            raise DataError(f"{BUILTIN} has no labels; use a CSV/TSV/JSONL file for seq-cls")
        return Documents(texts[:limit] if limit else texts, None, spec)
    path, field = split_spec(spec)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        texts, labels = _read_table(path, field or "text", label_column, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".json"):
        texts, labels = _read_jsonl(path, field or "text", label_column)
    elif suffix in (".txt", ".text", ""):
        if label_column:
            raise DataError(f"{path}: plain text has no labels; use a CSV/TSV/JSONL file for seq-cls")
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        labels = None
    else:
        raise DataError(f"{path}: unsupported data file type {suffix!r} (use .txt, .jsonl, .csv or .tsv)")
    if not texts:
        raise DataError(f"{spec}: no documents")
    if limit:
        texts = texts[:limit]
        labels = labels[:limit] if labels is not None else None
    return Documents(texts, labels, spec)


def _pydoc_texts() -> list[str]:
    from pydoc_data.topics import topics

    # Paragraphs, not whole topics: gives many moderately sized documents in a stable order.
    paragraphs = []
    for key in sorted(topics):
        paragraphs += [p.strip() for p in topics[key].split("\n\n") if len(p.strip()) > 40]
    return paragraphs


def _labels_to_int(raw: list[str], where: str) -> list[int]:
    try:
        return [int(v) for v in raw]
    except ValueError:
        # String classes: a stable sorted mapping, so the same file always gives the same ids.
        names = sorted(set(raw))
        if len(names) > 1000:
            raise DataError(
                f"{where}: {len(names)} distinct non-integer labels; is this the label column?"
            ) from None
        return [names.index(v) for v in raw]


def _read_table(
    path: Path, column: str, label_column: str | None, delimiter: str
) -> tuple[list[str], list[int] | None]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(
            handle, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        )
        columns = reader.fieldnames or []
        for name in [column] + ([label_column] if label_column else []):
            if name not in columns:
                raise DataError(f"{path}: no column {name!r} (columns: {', '.join(columns) or 'none'})")
        rows = [row for row in reader if (row.get(column) or "").strip()]
    texts = [row[column].strip() for row in rows]
    labels = _labels_to_int([row[label_column] for row in rows], str(path)) if label_column else None
    return texts, labels


def _read_jsonl(path: Path, field: str, label_column: str | None) -> tuple[list[str], list[int] | None]:
    texts: list[str] = []
    raw: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or field not in record:
            raise DataError(f"{path}:{number}: no field {field!r}")
        if label_column and label_column not in record:
            raise DataError(f"{path}:{number}: no label field {label_column!r}")
        texts.append(str(record[field]))
        if label_column:
            raw.append(str(record[label_column]))
    return texts, (_labels_to_int(raw, str(path)) if label_column else None)
