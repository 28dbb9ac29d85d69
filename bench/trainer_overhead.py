"""Trainer overhead: `scaling train`'s loop (scaling.engine.trainer.TrainingRun) vs a minimal hand-written
DeepSpeed loop, same model, resolved DeepSpeed JSON, data and batch, ZeRO-0/2/3 on 2 gloo ranks.

    python -m bench trainer_overhead [--steps 40] [--warmup 8] [--repeats 3] [--stages 0 2 3]

Both arms run inside the same two rank processes (one gloo group), alternating ours / hand / hand / ours ...
so machine noise hits both. Steady state = steps/s between the end of step `warmup` and the last step
(timestamps taken at the end of each optimizer step, so everything the loop does between steps counts:
logging, metrics flushes, the NaN/SIGTERM agreement, the data stream). Wall = build + train incl. start-up.
The hand loop gets its batches from a list prepared beforehand (the same batches our stream yields), so any
cost of our input pipeline counts against us. Also measured: the per-micro-step NaN/SIGTERM all-reduce.
Goal: tokens/s ratio ours/hand >= 0.97.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    SHAKESPEARE,
    alternate,
    fmt_ratio,
    paired_ratios,
    plot,
    run_ranks,
    steady_rate,
    summary,
    write_result,
)

GOAL = 0.97
# Small enough for 2 CPU ranks, big enough that a step is tens of ms (a real loop, not a no-op).
MODEL = {
    "model_type": "gpt2",
    "n_layer": 2,
    "n_embd": 128,
    "n_head": 4,
    "n_positions": 128,
    "vocab_size": 2000,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}
SEQ, MICRO = 128, 8


def prepare(work: Path) -> dict[str, str]:
    """Corpus, tokenizer and model config shared by every arm (built once, in the parent)."""
    from scaling.data import DataConfig, build_tokenizer

    corpus = work / "corpus.txt"
    lines = SHAKESPEARE.read_text(encoding="utf-8").splitlines()[:20000]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok_dir = work / "tok"
    tok = build_tokenizer(
        "tiny-gpt2", None, DataConfig(train=[str(corpus)]), task="clm", vocab_size=MODEL["vocab_size"], save_dir=tok_dir
    )
    tok.save_pretrained(tok_dir)
    model_dir = work / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(MODEL), encoding="utf-8")
    return {"corpus": str(corpus), "tokenizer": str(tok_dir), "model": str(model_dir)}


def train_args(paths: dict[str, str], out: Path, stage: int, steps: int) -> list[str]:
    return [
        "--model", paths["model"], "--data", paths["corpus"], "--tokenizer", paths["tokenizer"],
        "--output", str(out), "--ds-config", f"zero{stage}", "--precision", "fp32",
        "--seq-len", str(SEQ), "--micro-batch", str(MICRO), "--lr", "3e-4", "--max-steps", str(steps),
        "--log-every", "10", "--no-progress", "--no-tensorboard", "--no-export",
    ]  # fmt: skip


def _resolve(args: list[str], env: Any) -> Any:
    """What `scaling train` does before training: resolve options, prepare on rank 0, load the run."""
    from scaling.cli.train import train as command
    from scaling.cli.train_options import run_request_from_options
    from scaling.config.run import RunConfig
    from scaling.engine import dist as dist_setup
    from scaling.engine.prepare import materialize

    ctx = command.make_context("scaling train", list(args))
    request = run_request_from_options(ctx.params, world_size=env.world_size, explicit=frozenset(ctx.params))
    dist_setup.on_rank0(lambda: materialize(request), rank=env.rank)
    return RunConfig.load(Path(request.checkpoint.output) / "run_config.json")


def arm_ours(args: list[str], env: Any) -> dict[str, Any]:
    from scaling.engine.trainer import TrainingRun

    marks: list[float] = []

    class Timed(TrainingRun):
        def train_step(self, *a: Any) -> bool:
            stop = super().train_step(*a)
            marks.append(time.perf_counter())
            return stop

    start = time.perf_counter()
    run = _resolve(args, env)
    training = Timed(run, env)
    training.fit()
    wall = time.perf_counter() - start
    records = [json.loads(x) for x in (run.output / "metrics.jsonl").read_text().splitlines()] if env.rank == 0 else []
    wait = [r["data_wait_pct"] for r in records if "data_wait_pct" in r]
    return {"marks": marks, "wall": wall, "data_wait_pct": wait}


def arm_hand(args: list[str], env: Any, steps: int) -> dict[str, Any]:
    """The minimal loop a user would write by hand with the same pieces."""
    import deepspeed
    import torch

    from scaling.data import build_train_stream
    from scaling.engine.build import load_run_tokenizer, make_model

    start = time.perf_counter()
    run = _resolve(args, env)
    torch.manual_seed(run.optim.seed)
    tokenizer = load_run_tokenizer(run, env.rank)
    model = make_model(run, tokenizer)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=run.deepspeed)
    stream = build_train_stream(
        run.data, tokenizer, task="clm", micro_batch=run.optim.micro_batch,
        dp_rank=env.rank, dp_size=env.world_size, seed=run.optim.seed,
    )  # fmt: skip
    batches = [next(stream) for _ in range(steps)]
    marks = []
    for batch in batches:
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        marks.append(time.perf_counter())
    engine.destroy()
    return {"marks": marks, "wall": time.perf_counter() - start}


def check_cost(env: Any, calls: int = 300) -> dict[str, float]:
    """Seconds per call of the loop's per-micro-step NaN/SIGTERM agreement (one small all-reduce)."""
    import torch

    from scaling.engine.trainer import TrainingRun

    probe = TrainingRun.__new__(TrainingRun)
    probe.env, probe.rank = env, env.rank
    loss = torch.tensor(1.0)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            probe._check(loss, False)
        times.append((time.perf_counter() - start) / calls)
    return summary(times)


def rank_main(paths: dict[str, str], work: str, stages: list[int], steps: int, repeats: int) -> dict[str, Any]:
    from bench.common import init_group
    from scaling.engine import dist as dist_setup

    env = init_group()
    out: dict[str, Any] = {"runs": []}
    try:
        out["check_s"] = check_cost(env)
        for stage in stages:
            for i, arm in alternate(["ours", "hand"], repeats):
                args = train_args(paths, Path(work) / f"z{stage}-{arm}-{i}", stage, steps)
                result = arm_ours(args, env) if arm == "ours" else arm_hand(args, env, steps)
                out["runs"].append({"stage": stage, "arm": arm, "round": i, **result})
    finally:
        dist_setup.teardown()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench trainer_overhead")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 2, 3])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        paths = prepare(Path(tmp))
        rank0 = run_ranks(rank_main, 2, paths, tmp, args.stages, args.steps, args.repeats)[0]
    tokens_per_step = SEQ * MICRO * 2
    stages: dict[str, Any] = {}
    for stage in args.stages:
        runs = [r for r in rank0["runs"] if r["stage"] == stage]
        by = {a: sorted((r for r in runs if r["arm"] == a), key=lambda r: r["round"]) for a in ("ours", "hand")}
        rate = {a: [steady_rate(r["marks"], args.warmup) * tokens_per_step for r in by[a]] for a in by}
        wall = {a: [r["wall"] for r in by[a]] for a in by}
        step_s = {a: [1 / (x / tokens_per_step) for x in rate[a]] for a in rate}
        stages[f"zero{stage}"] = {
            "tokens_per_s": {a: summary(v) for a, v in rate.items()},
            "step_s": {a: summary(v) for a, v in step_s.items()},
            "ratio_tokens_per_s": paired_ratios(rate["ours"], rate["hand"]),
            "wall_s_incl_startup": {a: summary(v) for a, v in wall.items()},
            "ratio_wall": paired_ratios(wall["hand"], wall["ours"]),
            "data_wait_pct": summary([w for r in by["ours"] for w in r["data_wait_pct"]]),
            "met": paired_ratios(rate["ours"], rate["hand"])["median"] >= GOAL,
        }
    median_step = min(s["step_s"]["ours"]["median"] for s in stages.values())
    check = rank0["check_s"]
    payload = {
        "goal": f"tokens/s ours/hand >= {GOAL} (steady state, every ZeRO stage)",
        "setup": {
            "model": MODEL, "seq_len": SEQ, "micro_batch": MICRO, "ranks": 2, "precision": "fp32",
            "steps": args.steps, "warmup_steps_excluded": args.warmup, "repeats": args.repeats,
            "threads_per_rank": 1,
        },  # fmt: skip
        "stages": stages,
        "nan_sigterm_allreduce": {
            "seconds_per_call": check,
            "share_of_fastest_step_pct": 100 * check["median"] / median_step,
        },
        "met": all(s["met"] for s in stages.values()),
    }
    write_result("trainer_overhead", payload)

    def draw(ax: Any) -> None:
        names = list(stages)
        xs = range(len(names))
        for k, arm in enumerate(("ours", "hand")):
            med = [stages[n]["tokens_per_s"][arm]["median"] for n in names]
            lo = [med[j] - stages[n]["tokens_per_s"][arm]["min"] for j, n in enumerate(names)]
            hi = [stages[n]["tokens_per_s"][arm]["max"] - med[j] for j, n in enumerate(names)]
            ax.bar([x + 0.4 * k for x in xs], med, 0.4, yerr=[lo, hi], label=arm, capsize=3)
        ax.set_xticks([x + 0.2 for x in xs], names)
        ax.set_ylabel("tokens/s (2 ranks, steady state)")
        ax.set_title("scaling train vs hand-written DeepSpeed loop")
        ax.legend()

    plot("trainer_overhead", draw)
    for name, s in stages.items():
        print(f"{name}: tokens/s ours/hand {fmt_ratio(s['ratio_tokens_per_s'])}  wall hand/ours {fmt_ratio(s['ratio_wall'])}")
    print(f"NaN/SIGTERM all-reduce: {check['median'] * 1e6:.0f} us/call ({payload['nan_sigterm_allreduce']['share_of_fastest_step_pct']:.2f}% of a step)")
    return payload


if __name__ == "__main__":
    main()
