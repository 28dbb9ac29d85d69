"""Benchmark (not a test): stream a generated corpus of --gb gigabytes and report resident memory.

Reader mode reads every record of the file; pipeline mode runs the full train stream (tokenize, pack, batch)
for --seconds and samples the resident set, which must stay flat. Writes bench/results/data_memory.json.

    python bench/data_memory.py --gb 2 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    from scaling.data import DataConfig, build_train_stream
    from scaling.data.sources import parse_spec
    from scaling.data.streams import open_record_stream
    from scaling.data.tokenizer import iter_training_text, train_sentencepiece

    report: dict = {"gb": args.gb}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "big.txt"
        text = SHAKESPEARE.read_bytes()
        with open(corpus, "wb") as f:  # written lazily, block by block
            while f.tell() < args.gb * 2**30:
                f.write(text)
        tok = train_sentencepiece(
            iter_training_text([str(SHAKESPEARE)], max_sentences=20000),
            Path(tmp) / "tok",
            vocab_size=2000,
            model_type="bpe",
        )

        base = rss_mb()
        stream = open_record_stream(
            parse_spec(str(corpus)), label_column=None, max_doc_chars=10**6, dp_rank=0, dp_size=1, seed=0
        )
        start, records = time.perf_counter(), 0
        while stream.next_record(stop_at_epoch_end=True) is not None:
            records += 1
        report["reader"] = {
            "records": records,
            "seconds": round(time.perf_counter() - start, 1),
            "rss_before_mb": round(base, 1),
            "rss_after_mb": round(rss_mb(), 1),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        }
        train = build_train_stream(
            DataConfig(train=[str(corpus)], seq_len=512),
            tok,
            task="clm",
            micro_batch=16,
            dp_rank=0,
            dp_size=1,
            seed=0,
        )
        samples, start = [], time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            for _ in range(20):
                next(train)
            samples.append(round(rss_mb(), 1))
        report["pipeline"] = {
            "seconds": args.seconds,
            "tokens": int(train.metrics()["data/tokens"]),
            "mtok_per_s": train.metrics()["data/tokens"] / args.seconds / 1e6,
            "rss_first_mb": samples[0],
            "rss_last_mb": samples[-1],
            "rss_max_mb": max(samples),
        }
    out = ROOT / "bench" / "results" / "data_memory.json"
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
