"""Garbage data refused: the launch-time scan (scaling.data.quality) and the streams' own checks name the
file and the first bad record; bad records under --max-bad-fraction give a one-line notice."""

from __future__ import annotations

import json
import logging
import os
import tracemalloc
from pathlib import Path

import pytest

from scaling.data.config import DataConfig
from scaling.data.quality import scan_sources, short_source_notices
from scaling.data.sources import ReadLimits, parse_spec
from scaling.data.streams import open_record_stream
from scaling.data.tokenizer import train_sentencepiece
from scaling.errors import DataError

SHAKESPEARE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare.txt"


def problems(path: Path, task: str = "clm", **data) -> list[str]:
    return [p.render() for p in scan_sources(DataConfig(train=[str(path)], **data), task)]


def read_all(path: Path, *, label_column: str | None = None, limits: ReadLimits | None = None) -> list[str]:
    stream = open_record_stream(
        parse_spec(str(path)), label_column=label_column, max_doc_chars=10**6, dp_rank=0, dp_size=1, seed=0,
        limits=limits,
    )  # fmt: skip
    texts = []
    while (record := stream.next_record(stop_at_epoch_end=True)) is not None:
        texts.append(record.text)
    return texts


def shakespeare_lines(n: int) -> list[str]:
    return [line for line in SHAKESPEARE.read_text(encoding="utf-8").splitlines() if line.strip()][:n]


def test_random_bytes_in_a_text_file_are_refused_naming_file_and_offset(tmp_path: Path) -> None:
    garbage = tmp_path / "corpus.txt"
    head = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    garbage.write_bytes(head + b"\xff" + os.urandom(200_000))
    (problem,) = problems(garbage)
    assert str(garbage) in problem and "--max-bad-fraction 0.01" in problem
    assert f"corpus.txt:3 (byte offset {len(head)})" in problem
    assert "not utf-8" in problem and "--encoding" in problem


def test_latin1_text_says_which_encoding_was_assumed_and_reads_with_encoding(tmp_path: Path) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes("\n".join(f"Ligne {i}: déjà vu, café crème" for i in range(200)).encode("latin-1"))
    (problem,) = problems(latin)
    assert "200 of 200 records read are bad" in problem and "read as utf-8" in problem
    assert "latin.txt:1 (byte offset 10)" in problem
    assert problems(latin, encoding="latin-1") == []
    texts = read_all(latin, limits=ReadLimits(encoding="latin-1"))
    assert texts[0] == "Ligne 0: déjà vu, café crème" and len(texts) == 200


def test_bad_records_under_the_limit_give_one_notice(tmp_path: Path, caplog) -> None:
    text = tmp_path / "mostly.txt"
    lines = [line.encode() for line in shakespeare_lines(1000)]
    lines[500] = b"caf\xe9"
    text.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING, logger="scaling"):
        assert problems(text) == []
    (notice,) = [r.getMessage() for r in caplog.records if "mostly.txt" in r.getMessage()]
    assert "1 of 1000 records" in notice and "mostly.txt:501" in notice and "training goes on" in notice
    assert len(read_all(text)) == 1000  # under the limit the stream reads on too


def test_malformed_jsonl_lines_are_refused_naming_the_first(tmp_path: Path) -> None:
    jsonl = tmp_path / "docs.jsonl"
    rows = [json.dumps({"text": line}) for line in shakespeare_lines(60)]
    rows[7] = '{"text": "unterminated'
    rows[20] = '{"body": "no text field"}'
    jsonl.write_text("\n".join(rows) + "\n")
    (problem,) = problems(jsonl)
    assert (
        "2 of 60 records read are bad" in problem
        and "docs.jsonl:8" in problem
        and "not valid JSON" in problem
    )
    with pytest.raises(DataError, match=r"docs\.jsonl:8 .*not valid JSON"):
        read_all(jsonl)  # the stream refuses too, at the end of the file
    assert problems(jsonl, max_bad_fraction=0.05) == []


def test_csv_rows_without_their_columns_or_label_are_refused(tmp_path: Path) -> None:
    table = tmp_path / "reviews.csv"
    rows = ["text,label"] + [f"review number {i},{i % 2}" for i in range(50)]
    rows[10] = "a review that lost its label"
    rows[30] = "another review,"
    table.write_text("\n".join(rows) + "\n")
    (problem,) = problems(table, task="seq-cls")
    assert (
        "2 of 50 records" in problem
        and "reviews.csv:11" in problem
        and "1 field(s) where the header has 2" in problem
    )
    with pytest.raises(DataError, match=r"reviews\.csv:11"):
        read_all(table, label_column="label")


def test_rows_merged_by_a_stray_quote_are_detected_by_field_counts(tmp_path: Path) -> None:
    table = tmp_path / "quotes.csv"
    rows = ["text,label"] + [f"review number {i},{i % 2}" for i in range(50)]
    rows[5] = '"a stray quote opens this one,1'
    rows[9] = 'and it closes here" oddly,0'
    table.write_text("\n".join(rows) + "\n")
    (problem,) = problems(table, task="seq-cls")
    assert "quotes.csv:6" in problem and "5 lines read as one row" in problem and "stray" in problem
    two = tmp_path / "two.csv"
    rows = ["text,label"] + [f"review number {i},{i % 2}" for i in range(50)]
    rows[5] = '"a stray quote merges two rows,1'
    rows[6] = 'the next one" ends it,0'
    two.write_text("\n".join(rows) + "\n")
    (problem,) = problems(two, task="seq-cls")
    assert "two.csv:6" in problem and "2 lines read as one row" in problem
    # A quoted field that really spans lines is fine.
    legit = tmp_path / "multiline.csv"
    legit.write_text('text,label\n"a review\nover two lines",1\nshort,0\n')
    assert problems(legit, task="seq-cls") == []
    assert read_all(legit, label_column="label") == ["a review\nover two lines", "short"]


def test_a_quote_that_never_closes_names_file_and_line_not_just_the_field_limit(tmp_path: Path) -> None:
    table = tmp_path / "unclosed.csv"
    rows = ["text,label"] + [f"review number {i} " + "x" * 200 + f",{i % 2}" for i in range(1000)]
    rows[400] = '"unclosed review,1'
    table.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        read_all(table, label_column="label")
    message = str(err.value)
    assert "unclosed.csv:401" in message and "field larger than field limit" in message and "stray" in message
    (problem,) = problems(table, task="seq-cls")
    assert "unclosed.csv:401" in problem


def test_one_huge_record_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    jsonl = tmp_path / "huge.jsonl"
    with open(jsonl, "w") as f:
        f.write(json.dumps({"text": "fine"}) + "\n")
        f.write('{"text": "' + "a" * (40 << 20) + '"}\n')
    limits = ReadLimits(max_record_bytes=1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(
            DataError, match=r"huge\.jsonl:2: a record longer than --max-record-bytes 1048576"
        ):
            read_all(jsonl, limits=limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # the 40 MB line is never held whole
    (problem,) = problems(jsonl, max_record_bytes=1 << 20)
    assert "huge.jsonl:2" in problem and "raise --max-record-bytes" in problem


def test_an_unreadable_file_names_itself(tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet.*cannot read"):
        read_all(broken)


def test_encoding_must_exist_and_keep_ascii(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("hello\n")
    assert "no such codec" in problems(path, encoding="klingon")[0]
    assert "keep ASCII" in problems(path, encoding="utf-16")[0]


def test_a_source_shorter_than_one_block_gives_a_notice(tmp_path: Path, clm_tokenizer: Path, caplog) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(clm_tokenizer)
    one_line = tmp_path / "one.txt"
    one_line.write_text("To be, or not to be, that is the question.\n")
    data = DataConfig(train=[str(one_line), str(SHAKESPEARE)], seq_len=128)
    with caplog.at_level(logging.WARNING, logger="scaling"):
        (notice,) = short_source_notices(data, tokenizer, "clm")
    assert "one.txt" in notice and "shorter than one --seq-len 128 block" in notice
    assert any("one.txt" in r.getMessage() for r in caplog.records)


def test_tokenizer_training_failure_speaks_of_our_options(tmp_path: Path) -> None:
    many_chars = ["".join(chr(0x4E00 + (i * 7 + j) % 3000) for j in range(40)) for i in range(400)]
    with pytest.raises(DataError) as err:
        train_sentencepiece(many_chars, tmp_path / "tok", vocab_size=256)
    message = str(err.value)
    assert "--vocab-size" in message and "--encoding" in message and "character_coverage" not in message


def test_a_source_shorter_than_one_block_still_trains_clm(tmp_path: Path, clm_tokenizer: Path) -> None:
    """It used to stop with "a whole pass yields no batch ... no conversation has an assistant token" (an sft
    guard) once two passes gave no full block; packing a short source only needs more passes."""
    from transformers import AutoTokenizer

    from scaling.data import build_train_stream

    tokenizer = AutoTokenizer.from_pretrained(clm_tokenizer)
    one_line = tmp_path / "one.txt"
    one_line.write_text("To be, or not to be.\n")
    data = DataConfig(train=[str(one_line)], seq_len=64)
    stream = build_train_stream(data, tokenizer, task="clm", micro_batch=2, dp_rank=0, dp_size=1, seed=0)
    batch = next(stream)
    ids = tokenizer("To be, or not to be.", add_special_tokens=False)["input_ids"]
    assert batch["input_ids"].shape == (2, 64)
    cycle = ",".join(map(str, [*ids, tokenizer.eos_token_id] * 40))
    for row in batch["input_ids"].tolist():  # the line, again and again
        assert ",".join(map(str, row)) in cycle
