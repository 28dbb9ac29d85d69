"""Readers on real text: every source type, seeking, bad data, and the errors a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaling.data.sources import ReadLimits, parse_spec
from scaling.data.streams import open_record_stream
from scaling.errors import DataError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare.txt"
SST2_DEV = SHARED / "sst2" / "dev.tsv"


def read_all(
    raw: str,
    *,
    label_column: str | None = None,
    dp_rank: int = 0,
    dp_size: int = 1,
    max_doc_chars: int = 1_000_000,
    limits: ReadLimits | None = None,
):
    stream = open_record_stream(
        parse_spec(raw),
        label_column=label_column,
        max_doc_chars=max_doc_chars,
        dp_rank=dp_rank,
        dp_size=dp_size,
        seed=0,
        limits=limits,
    )
    stream.shuffle_files = False
    records = []
    while (record := stream.next_record(stop_at_epoch_end=True)) is not None:
        records.append(record)
    return records, stream


def sst2_rows() -> list[tuple[str, int]]:
    lines = SST2_DEV.read_text(encoding="utf-8").splitlines()[1:]
    return [(line.split("\t")[0], int(line.split("\t")[1])) for line in lines]


def test_spec_parsing():
    spec = parse_spec("corpus/*.jsonl:text@0.7")
    assert (spec.path, spec.field, spec.weight, spec.hf) == ("corpus/*.jsonl", "text", 0.7, False)
    assert parse_spec("hf:/data/ds").hf and parse_spec("hf:/data/ds").path == "/data/ds"
    assert parse_spec("a/b.txt:paragraph").field == "paragraph"
    assert parse_spec("a/b.txt@2").weight == 2.0 and parse_spec("a/b.txt@2").field is None
    with pytest.raises(DataError, match="weight"):
        parse_spec("a.txt@0")


def test_text_lines_match_nonblank_lines_of_shakespeare():
    records, stream = read_all(str(SHAKESPEARE))
    lines = SHAKESPEARE.read_text(encoding="utf-8").splitlines()
    assert [r.text for r in records] == [line for line in lines if line.strip()]
    assert stream.counts.skipped_empty == sum(1 for line in lines if not line.strip())


def test_text_paragraphs_and_files(tmp_path):
    records, _ = read_all(f"{SHAKESPEARE}:paragraph")
    paragraphs = [p.strip("\n") for p in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    assert len(records) == len(paragraphs)
    assert records[0].text == paragraphs[0]
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "b.txt").write_text("three\n")
    whole, _ = read_all(f"{tmp_path}:file")
    assert [r.text for r in whole] == ["one\ntwo\n", "three\n"]


def test_tsv_csv_jsonl_parquet_and_hf_give_the_same_sst2_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sst2_rows()
    tsv, _ = read_all(f"{SST2_DEV}:sentence", label_column="label")
    assert [(r.text, r.label) for r in tsv] == rows
    import csv

    with open(tmp_path / "dev.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "sentence"])
        writer.writerows([(label, text) for text, label in rows])
    with open(tmp_path / "dev.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"sentence": t, "label": lab}) + "\n" for t, lab in rows)
    pq.write_table(
        pa.table({"sentence": [t for t, _ in rows], "label": [lab for _, lab in rows]}),
        tmp_path / "dev.parquet",
        row_group_size=100,
    )
    for name in ("dev.csv", "dev.jsonl", "dev.parquet"):
        got, _ = read_all(f"{tmp_path / name}:sentence", label_column="label")
        assert [(r.text, r.label) for r in got] == rows, name
    hf, _ = read_all(f"hf:{tmp_path / 'dev.jsonl'}:sentence", label_column="label")
    assert [(r.text, r.label) for r in hf] == rows


def test_hf_save_to_disk_directory(tmp_path):
    import datasets

    rows = sst2_rows()[:50]
    datasets.Dataset.from_dict({"text": [t for t, _ in rows]}).save_to_disk(str(tmp_path / "ds"))
    got, _ = read_all(f"hf:{tmp_path / 'ds'}")
    assert [r.text for r in got] == [t for t, _ in rows]


def test_glob_and_directory_expand_sorted(tmp_path):
    for i in range(3):
        (tmp_path / f"part{i}.jsonl").write_text(json.dumps({"text": f"doc {i}"}) + "\n")
    (tmp_path / "notes.bin").write_bytes(b"\x00")
    by_glob, _ = read_all(str(tmp_path / "part*.jsonl"))
    by_dir, _ = read_all(str(tmp_path))
    assert [r.text for r in by_glob] == [r.text for r in by_dir] == ["doc 0", "doc 1", "doc 2"]


def test_resume_seeks_to_byte_offset_and_parquet_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"row {i}" for i in range(1000)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "t.parquet", row_group_size=64)
    for raw in (str(SHAKESPEARE), str(tmp_path / "t.parquet")):
        full, _ = read_all(raw)
        stream = open_record_stream(
            parse_spec(raw), label_column=None, max_doc_chars=10**6, dp_rank=0, dp_size=1, seed=0
        )
        for _ in range(700):
            stream.next_record()
        state = stream.state()
        resumed = open_record_stream(
            parse_spec(raw), label_column=None, max_doc_chars=10**6, dp_rank=0, dp_size=1, seed=0
        )
        resumed.load_state(state)
        assert [resumed.next_record().text for _ in range(5)] == [r.text for r in full[700:705]]
        assert state["offset"] > 0


def test_two_ranks_read_disjoint_complete_shares():
    rank0, _ = read_all(str(SST2_DEV), label_column="label", dp_rank=0, dp_size=2)
    rank1, _ = read_all(str(SST2_DEV), label_column="label", dp_rank=1, dp_size=2)
    assert {r.index for r in rank0}.isdisjoint({r.index for r in rank1})
    assert sorted(r.text for r in rank0 + rank1) == sorted(t for t, _ in sst2_rows())


def test_bad_data_is_repaired_skipped_split_and_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good line\n\n   \ncaf\xe9 broken\n" + "é".encode() * 3000 + b"\nend\n")
    tolerant = ReadLimits(
        max_bad_fraction=1.0
    )  # the default refuses these files (tests/unit/test_data_quality.py)
    records, stream = read_all(str(path), max_doc_chars=1000, limits=tolerant)
    assert records[0].text == "good line"
    assert records[1].text == "caf\ufffd broken"
    assert stream.counts.repaired_utf8 == 1 and stream.counts.skipped_empty == 2
    long_pieces = [r.text for r in records[2:-1]]
    assert "".join(long_pieces) == "é" * 3000 and all(len(p.encode()) <= 1000 for p in long_pieces)
    assert stream.counts.split_long == len(long_pieces) - 1 and "\ufffd" not in "".join(long_pieces)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "ok"}\n{not json}\n{"other": 1}\n{"text": ""}\n')
    records, stream = read_all(str(jsonl), limits=tolerant)
    assert [r.text for r in records] == ["ok"]
    assert stream.counts.skipped_bad == 2 and stream.counts.skipped_empty == 1


def test_missing_and_empty_sources_raise_naming_them(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.txt"):
        read_all(str(tmp_path / "nowhere.txt"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.txt"):
        read_all(str(tmp_path / "empty.txt"))
    with pytest.raises(DataError, match="no column 'nope'"):
        read_all(f"{SST2_DEV}:nope")
