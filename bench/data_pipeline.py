"""Benchmark (not a test): our tokenization throughput vs `datasets.map(batched=True)` with the same tokenizer,
alternating arms, medians; and pad fraction packed vs naive padding. Writes bench/results/data_pipeline.json.

    python bench/data_pipeline.py [--repeats 5] [--lines 40000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def ours(corpus: Path, tok, seq_len: int) -> tuple[float, int]:
    from scaling.data import DataConfig, build_train_stream

    data = DataConfig(train=[str(corpus)], seq_len=seq_len)
    stream = build_train_stream(data, tok, task="clm", micro_batch=16, dp_rank=0, dp_size=1, seed=0)
    start = time.perf_counter()
    while stream.epoch == 0:
        next(stream)
    return time.perf_counter() - start, int(stream.metrics()["data/tokens"])


def hf_map(corpus: Path, tok, cache: Path) -> tuple[float, int]:
    import datasets

    datasets.disable_progress_bars()
    start = time.perf_counter()
    ds = datasets.load_dataset("text", data_files=str(corpus), split="train", cache_dir=str(cache))
    ds = ds.filter(lambda b: [bool(t.strip()) for t in b["text"]], batched=True)
    ds = ds.map(
        lambda b: tok(b["text"], add_special_tokens=False),
        batched=True,
        batch_size=1000,
        remove_columns=["text"],
    )
    tokens = sum(len(x) + 1 for x in ds["input_ids"])
    return time.perf_counter() - start, tokens


def pad_fractions(tok, seq_len: int) -> dict[str, float]:
    from scaling.data import DataConfig, build_train_stream

    lines = [line for line in SHAKESPEARE.read_text(encoding="utf-8").splitlines() if line.strip()]
    lengths = [min(len(ids) + 1, seq_len) for ids in tok(lines, add_special_tokens=False)["input_ids"]]
    out = {"naive_pad_each_doc_to_seq_len": 1 - sum(lengths) / (len(lengths) * seq_len)}
    for name, packing in (("packed", True), ("dynamic_padding_length_grouped", False)):
        stream = build_train_stream(
            DataConfig(train=[str(SHAKESPEARE)], seq_len=seq_len, packing=packing),
            tok,
            task="clm",
            micro_batch=16,
            dp_rank=0,
            dp_size=1,
            seed=0,
        )
        for _ in range(200):
            next(stream)
        out[name] = stream.metrics()["data/pad_fraction"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--copies", type=int, default=4, help="Concatenated copies of tinyshakespeare in the corpus."
    )
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    from scaling.data.tokenizer import iter_training_text, train_sentencepiece

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        tok = train_sentencepiece(
            iter_training_text([str(SHAKESPEARE)], max_sentences=20000),
            tmp_path / "tok",
            vocab_size=2000,
            model_type="bpe",
        )
        corpus = tmp_path / "corpus.txt"
        corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8") * args.copies, encoding="utf-8")
        results: dict[str, list[float]] = {"ours": [], "datasets_map": []}
        tokens = {}
        for i in range(args.repeats):  # alternate arms so drift on a shared machine hits both
            for arm in ("ours", "datasets_map") if i % 2 == 0 else ("datasets_map", "ours"):
                if arm == "ours":
                    seconds, n = ours(corpus, tok, args.seq_len)
                else:
                    seconds, n = hf_map(corpus, tok, tmp_path / f"cache{i}")
                results[arm].append(n / seconds / 1e6)
                tokens[arm] = n
        report = {
            "corpus_bytes": corpus.stat().st_size,
            "tokens": tokens,
            "mtok_per_s_median": {k: statistics.median(v) for k, v in results.items()},
            "mtok_per_s_all": results,
            "pad_fraction_seq_len_128": pad_fractions(tok, 128),
            "cpus": os.cpu_count(),
            "note": "ours = read + tokenize + pack + batch (one process); datasets_map = load_dataset(text) + filter + map(batched) with Arrow cache",
        }
    out = ROOT / "bench" / "results" / "data_pipeline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"{'arm':<14}{'median Mtok/s':>14}")
    for arm, value in report["mtok_per_s_median"].items():
        print(f"{arm:<14}{value:>14.3f}")
    print("pad fraction (seq 128):", report["pad_fraction_seq_len_128"])


if __name__ == "__main__":
    main()
