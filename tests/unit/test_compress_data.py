"""The compression package's small data reader and batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaling.compress.data import BUILTIN, read_documents
from scaling.errors import DataError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_txt_one_document_per_line(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("first line\n\n  second line  \nthird\n")
    docs = read_documents(str(f))
    assert docs.texts == ["first line", "second line", "third"]
    assert docs.labels is None
    assert read_documents(str(f), limit=2).texts == ["first line", "second line"]


def test_jsonl_field_and_labels(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text("\n".join(json.dumps({"body": f"doc {i}", "y": i % 2}) for i in range(5)) + "\n")
    docs = read_documents(f"{f}:body", label_column="y")
    assert docs.texts[3] == "doc 3"
    assert docs.labels == [0, 1, 0, 1, 0]
    with pytest.raises(DataError, match="no field 'text'"):
        read_documents(str(f))


def test_string_labels_map_to_stable_ids(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("text,label\ngood,pos\nbad,neg\nfine,pos\n")
    assert read_documents(str(f), label_column="label").labels == [1, 0, 1]


@pytest.mark.skipif(not (SHARED / "sst2" / "dev.tsv").is_file(), reason="shared data absent")
def test_sst2_tsv_column_and_labels() -> None:
    docs = read_documents(f"{SHARED / 'sst2' / 'dev.tsv'}:sentence", label_column="label")
    assert len(docs.texts) == 872
    assert set(docs.labels or []) == {0, 1}


def test_missing_column_lists_the_columns(tmp_path: Path) -> None:
    f = tmp_path / "a.tsv"
    f.write_text("sentence\tlabel\nhello\t1\n")
    with pytest.raises(DataError, match=r"no column 'text' \(columns: sentence, label\)"):
        read_documents(str(f))


def test_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_documents(str(tmp_path / "nope.txt"))
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(DataError, match="unsupported data file type"):
        read_documents(str(tmp_path / "x.parquet"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="no documents"):
        read_documents(str(tmp_path / "empty.txt"))
    with pytest.raises(DataError, match="plain text has no labels"):
        (tmp_path / "a.txt").write_text("x\n")
        read_documents(str(tmp_path / "a.txt"), label_column="label")


def test_builtin_pydoc_text() -> None:
    docs = read_documents(BUILTIN)
    assert len(docs.texts) > 500
    assert all(len(t) > 40 for t in docs.texts)
