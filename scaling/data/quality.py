"""Garbage in, refused before launch: a bounded scan of each source's head on the launching host.

Each file is read the way training reads it (same readers, encoding and bounds) for at most SCAN_RECORDS
records or SCAN_BYTES bytes. A file whose bad share (undecodable bytes, malformed JSON, CSV rows without the
needed columns or merged by a stray quote, bad labels) exceeds --max-bad-fraction, a record over
--max-record-bytes, or an unreadable row is a problem (exit 2, naming the file and the first bad record);
bad records below the limit give a one-line notice. What the scan cannot see, the streams check as they
read (scaling.data.streams: the same limit, errors naming file and line).
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Iterable
from functools import cache

from scaling.data.config import DataConfig
from scaling.data.sources import (
    ReaderOptions,
    ReadLimits,
    expand_files,
    file_reader,
    is_packed_dir,
    parse_spec,
)
from scaling.data.streams import bad_share_message, open_record_stream
from scaling.errors import DataError, Problem

SCAN_RECORDS = 20_000
SCAN_BYTES = 4 << 20
"""Per file: enough to see a systematic defect (a wrong encoding, a broken export), fast on every rank."""
SCAN_FILES = 8
"""Files scanned per source (a glob of thousands of shards is sampled by its first files)."""

log = logging.getLogger(__name__)


def encoding_problems(encoding: str) -> list[Problem]:
    try:
        codecs.lookup(encoding)
    except LookupError:
        return [Problem("--encoding", "no such codec", encoding, fix="e.g. utf-8, latin-1, cp1252")]
    if "\n".encode(encoding, errors="replace") != b"\n" or 'a,\t"'.encode(encoding) != b'a,\t"':
        return [Problem("--encoding", "records are split at ASCII newlines: the codec must keep ASCII as is "
                        "(utf-16/32 do not; convert the files to utf-8)", encoding)]  # fmt: skip
    return []


def scan_sources(data: DataConfig, task: str) -> list[Problem]:
    """Problems of every local source of `data` (train and eval); notices for bad records under the limit."""
    problems = encoding_problems(data.encoding)
    if problems:
        return problems
    limits = ReadLimits.of(data)
    for option, specs in (("--data", data.train), ("--eval-data", data.eval)):
        for raw in specs:
            problems.extend(_scan_source(option, raw, data, task, limits))
    return problems


def _scan_source(option: str, raw: str, data: DataConfig, task: str, limits: ReadLimits) -> list[Problem]:
    try:
        spec = parse_spec(raw)
        if spec.hf or is_packed_dir(spec.path):
            return []  # read by `datasets` / already tokenized: checked when read
        files = expand_files(spec)
    except DataError as err:
        return [Problem(option, str(err), raw)]
    problems = []
    for path in files[:SCAN_FILES]:
        opts = ReaderOptions(
            field=spec.field,
            label_column=data.label_column if task == "seq-cls" else None,
            max_doc_chars=data.max_doc_chars,
            records=task == "sft",
            limits=limits,
        )
        try:
            reader = file_reader(path, spec, records=opts.records)
            for n, (_, end) in enumerate(reader(path, 0, opts)):
                if n + 1 >= SCAN_RECORDS or end >= SCAN_BYTES:
                    break
        except DataError as err:
            problems.append(Problem(option, str(err), raw))
            continue
        counts = opts.counts
        if not counts.bad:
            continue
        message = bad_share_message(opts, raw)
        if counts.bad > limits.max_bad_fraction * counts.read:
            fix = "repair or remove those records, or allow more with --max-bad-fraction"
            problems.append(Problem(option, message, raw, fix=fix))
        else:
            _notice(f"{message}: skipped or repaired, training goes on")
    return problems


@cache
def _notice(message: str) -> None:
    # Cached: the checks run on every rank and again when rank 0 prepares; one line is the notice.
    log.warning(message)


def short_source_notices(data: DataConfig, tokenizer, task: str) -> list[str]:
    """Sources whose whole text is shorter than one packed block: every block repeats them (a one-line file
    was looped 183 times in 20 steps, silently). A notice, not an error: a tiny smoke-test corpus is legal."""
    if task not in ("clm", "mlm") or not data.packing:
        return []
    from scaling.data.pipeline import encode_texts

    notices = []
    for raw in data.train:
        spec = parse_spec(raw)
        if spec.hf or is_packed_dir(spec.path):
            continue
        stream = open_record_stream(
            spec, label_column=None, max_doc_chars=data.max_doc_chars, dp_rank=0, dp_size=1, seed=0,
            limits=ReadLimits.of(data),
        )  # fmt: skip
        if stream.size_bytes > data.seq_len * 64:  # no text of that size has fewer tokens than a block
            continue
        stream.shuffle_files = False
        try:
            texts = list(_one_pass(stream))
        except DataError:
            continue  # an empty source: reported as such when the stream is built
        tokens = sum(len(ids) + 1 for ids in encode_texts(tokenizer, texts)) if texts else 0
        if 0 < tokens < data.seq_len:
            message = (
                f"data source {raw!r}: {tokens} tokens in all, shorter than one --seq-len {data.seq_len} block: "
                f"each block repeats it ~{data.seq_len / tokens:.0f} times"
            )
            _notice(message)
            notices.append(message)
    return notices


def _one_pass(stream) -> Iterable[str]:
    while (record := stream.next_record(stop_at_epoch_end=True)) is not None:
        yield record.text
