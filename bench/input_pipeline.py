"""Input pipeline: is training ever waiting for data?

    python -m bench input_pipeline [--seconds 8] [--repeats 3]

- stall share: `data_wait_pct` from our trainer's metrics.jsonl (the trainer_overhead runs: 2 ranks,
  ZeRO-0/2/3; that benchmark must have run first). Goal < 1%.
- ceiling: the stream alone with a null model (no forward/backward), tokens/s of one rank's stream, against
  the tokens/s one rank consumes in training (same data, seq, batch as trainer_overhead): headroom factor.
  Ours alternates with a "pre-tokenized" arm (the same batches replayed from memory) for reference.
- tokenization throughput vs `datasets.map(batched=True)` and pad fraction packed vs naive: bench/data_pipeline.py
  (another engineer's, run by `python -m bench all`); its results are folded in here. Plus SST-2: pad fraction
  of length-grouped dynamic padding vs padding every sentence to 128.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, SST2, alternate, fix_threads, paired_ratios, plot, summary, write_result

GOAL_STALL_PCT = 1.0


def stream_rate(stream: Any, seconds: float) -> float:
    tokens = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(stream)
        tokens += (
            int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        )
    return tokens / (time.perf_counter() - start)


def replay_rate(batches: list[dict[str, Any]], seconds: float) -> float:
    tokens, i = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = batches[i % len(batches)]
        i += 1
        tokens += (
            int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        )
    return tokens / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench input_pipeline")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    fix_threads(1)
    from bench import trainer_overhead as to
    from scaling.data import DataConfig, build_tokenizer, build_train_stream, load_tokenizer

    payload: dict[str, Any] = {"goal": f"data wait < {GOAL_STALL_PCT}% of step time"}
    overhead = RESULTS / "trainer_overhead.json"
    train_rate_per_rank = None
    if overhead.is_file():
        o = json.loads(overhead.read_text())
        payload["stall_pct"] = {k: s["data_wait_pct"] for k, s in o["stages"].items()}
        # Steady state: every logged 10-step window but each run's first (whose first step reads and
        # tokenizes the first chunk before anything can be prefetched: start-up, like building the model).
        steady = [
            w for s in o["stages"].values() for run in s.get("data_wait_pct_windows", []) for w in run[1:]
        ]
        first = [run[0] for s in o["stages"].values() for run in s.get("data_wait_pct_windows", []) if run]
        payload["stall_pct_steady_windows"] = summary(steady)
        payload["stall_pct_first_window"] = summary(first)
        payload["stall_pct_steady_mean"] = sum(steady) / len(steady) if steady else None
        payload["stall_pct_worst"] = max(s["data_wait_pct"]["max"] for s in o["stages"].values())
        payload["met"] = (
            payload["stall_pct_steady_mean"] is not None and payload["stall_pct_steady_mean"] < GOAL_STALL_PCT
        )
        train_rate_per_rank = max(s["tokens_per_s"]["ours"]["median"] for s in o["stages"].values()) / 2
    else:
        payload["met"] = None
        payload["stall_pct"] = "trainer_overhead has not run"

    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp:
        paths = to.prepare(Path(tmp))
        tok = load_tokenizer(paths["tokenizer"])

        def fresh() -> Any:
            data = DataConfig(train=[paths["corpus"]], seq_len=to.SEQ)
            return build_train_stream(
                data, tok, task="clm", micro_batch=to.MICRO, dp_rank=0, dp_size=2, seed=0
            )

        warm = fresh()
        replay = [next(warm) for _ in range(64)]
        rates: dict[str, list[float]] = {"stream": [], "replay": []}
        for _, arm in alternate(["stream", "replay"], args.repeats):
            rates[arm].append(
                stream_rate(fresh(), args.seconds) if arm == "stream" else replay_rate(replay, args.seconds)
            )
        payload["null_model_ceiling"] = {
            "stream_tokens_per_s_one_rank": summary(rates["stream"]),
            "replay_tokens_per_s_one_rank": summary(rates["replay"]),
            "stream_over_replay": paired_ratios(rates["stream"], rates["replay"]),
            "training_tokens_per_s_one_rank": train_rate_per_rank,
            "headroom_x": (summary(rates["stream"])["median"] / train_rate_per_rank)
            if train_rate_per_rank
            else None,
        }

        # SST-2: pad fraction of length-grouped dynamic padding vs everything padded to 128.
        sst_tok = build_tokenizer("tiny-bert", None, DataConfig(train=[f"{SST2 / 'train.tsv'}:sentence"]),
                                  task="seq-cls", vocab_size=2000, save_dir=Path(tmp) / "sst-tok")  # fmt: skip
        data = DataConfig(train=[f"{SST2 / 'train.tsv'}:sentence"], seq_len=128)
        stream = build_train_stream(
            data, sst_tok, task="seq-cls", micro_batch=32, dp_rank=0, dp_size=1, seed=0
        )
        for _ in range(300):
            next(stream)
        dynamic = stream.metrics()["data/pad_fraction"]
        rows = [x.split("\t")[0] for x in (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]]
        lengths = [min(len(x), 128) for x in sst_tok(rows, truncation=True, max_length=128)["input_ids"]]
        naive = 1 - sum(lengths) / (128 * len(lengths))
    payload["pad_fraction"] = {"sst2_dynamic_length_grouped": dynamic, "sst2_naive_pad_to_128": naive}
    dp = RESULTS / "data_pipeline.json"
    if dp.is_file():
        d = json.loads(dp.read_text())
        payload["tokenization_mtok_per_s"] = d.get("mtok_per_s_median")
        med = d.get("mtok_per_s_median") or {}
        if med.get("datasets_map"):
            payload["tokenization_ours_over_datasets_map"] = med["ours"] / med["datasets_map"]
        payload["pad_fraction"]["shakespeare_seq128"] = d.get("pad_fraction_seq_len_128")
    write_result("input_pipeline", payload)

    def draw(ax: Any) -> None:
        names, values = [], []
        for k, v in payload["pad_fraction"].items():
            if isinstance(v, dict):
                for k2, v2 in v.items():
                    names.append(f"shakespeare {k2[:18]}")
                    values.append(v2)
            else:
                names.append(k.replace("_", " ")[:28])
                values.append(v)
        ax.barh(names, [100 * v for v in values])
        ax.set_xlabel("pad tokens (% of batch tokens)")
        ax.set_title("Padding waste: packing / length grouping vs naive")

    plot("input_pipeline", draw, size=(7.5, 3.6))
    ceiling = payload["null_model_ceiling"]
    print(f"stall worst {payload.get('stall_pct_worst')}%, stream ceiling {ceiling['headroom_x']}x training")
    return payload


if __name__ == "__main__":
    main()
