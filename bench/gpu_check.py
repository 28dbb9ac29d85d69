"""GPU check (run by bench/gpu_check.sh on one H200/H100; `--dry-run` runs the same code on CPU in seconds).

A Llama-shaped ~1B model from config (h=2048, 22 layers, 32 heads, 4 KV heads, MLP 5632 - TinyLlama's shape,
vocabulary from a tokenizer trained here on generated text), bf16, sequence 2048, ZeRO-1 on one GPU, torch's
fused AdamW through DeepSpeed's `torch_adam` (`--ds-fused-adam`: DeepSpeed's JIT FusedAdam instead; it
compiles with nvcc first). Warm-up steps, then timed steps. Prints and writes (bench/results/gpu_check.json):

- tokens/s and MFU = tokens/s * (6N + 12*L*H*Q*T) / peak, against the datasheet (989 TFLOP/s bf16, H100/H200
  SXM) and a measured 8192^3 bf16 matmul (goal: MFU >= 50% of the datasheet);
- peak GPU memory vs `scaling estimate` for the same model, layout and resolved DeepSpeed config;
- the fp16 path with dynamic loss scaling (loss scale before/after, tokens/s);
- our trainer vs a plain PyTorch loop (autocast bf16, fused AdamW, same model, batches, clipping).

    python -m bench.gpu_check [--dry-run] [--steps 30] [--warmup 10] [--micro-batch 16] [--out PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATASHEET = 989e12
GOAL_MFU = 50.0

FULL = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32,
        "num_key_value_heads": 4, "intermediate_size": 5632, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False}  # fmt: skip
TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 176, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False}  # fmt: skip


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def synthetic_corpus(path: Path, megabytes: float) -> None:
    """Pronounceable pseudo-words with a Zipf-like frequency: text a BPE tokenizer can learn, no download."""
    rng = random.Random(0)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "st", "qu", "ng"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(20000)]
    weights = [1 / (i + 1) for i in range(len(words))]
    lines, size = [], 0
    while size < megabytes * 1e6:
        line = " ".join(rng.choices(words, weights, k=rng.randint(5, 40))) + "."
        lines.append(line)
        size += len(line) + 1
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def prepare(work: Path, dry: bool) -> dict[str, str]:
    from scaling.data import DataConfig, build_tokenizer

    corpus = work / "corpus.txt"
    synthetic_corpus(corpus, 0.2 if dry else 3.0)
    tok_dir = work / "tok"
    data = DataConfig(train=[str(corpus)])
    tok = build_tokenizer(
        "tiny-llama", None, data, task="clm", vocab_size=512 if dry else 8192, save_dir=tok_dir
    )
    tok.save_pretrained(tok_dir)
    model_dir = work / "model"
    model_dir.mkdir()
    shape = dict(TINY if dry else FULL, vocab_size=len(tok))
    (model_dir / "config.json").write_text(json.dumps(shape), encoding="utf-8")
    return {"corpus": str(corpus), "tokenizer": str(tok_dir), "model": str(model_dir)}


def args_for(paths: dict[str, str], out: Path, precision: str, seq: int, micro: int, steps: int, cuda: bool,
             ds_fused: bool) -> list[str]:  # fmt: skip
    args = ["--model", paths["model"], "--data", paths["corpus"], "--tokenizer", paths["tokenizer"],
            "--output", str(out), "--ds-config", "zero1", "--precision", precision, "--seq-len", str(seq),
            "--micro-batch", str(micro), "--lr", "3e-4", "--max-steps", str(steps), "--log-every", "5",
            "--no-progress", "--no-tensorboard", "--no-export", "--seed", "0"]  # fmt: skip
    if not ds_fused:  # torch.optim.AdamW(fused=True) through DeepSpeed's torch_adam: nothing to compile
        for item in (
            "optimizer.type=AdamW",
            "optimizer.params.torch_adam=true",
            "optimizer.params.fused=true",
        ):
            args += ["--set", item]
    # else: no optimizer section; on CUDA the resolver leaves torch_adam unset and DeepSpeed JIT-builds FusedAdam
    return args


def rate(marks: list[float], warmup: int) -> float:
    return (len(marks) - 1 - warmup) / (marks[-1] - marks[warmup])


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_ours(args: list[str], env: Any, warmup: int) -> dict[str, Any]:
    import torch

    from bench.trainer_overhead import _resolve
    from scaling.checkpoint.store import CheckpointRef
    from scaling.engine.step_window import loss_scale
    from scaling.engine.trainer import Trainer

    marks: list[float] = []
    scales: list[float | None] = []

    class Timed(Trainer):
        def train_step(self, *a: Any) -> bool:
            stop = super().train_step(*a)
            sync()
            marks.append(time.perf_counter())
            scales.append(loss_scale(self.engine))
            return stop

        def save_checkpoint(self, step: int) -> CheckpointRef:
            # The final checkpoint of a 1B model is ~14 GB of disk and tens of seconds, outside the timed steps:
            # not what this check measures, so it is skipped (the loop's other work all runs).
            return CheckpointRef(self.ckpt.root, f"step-{step:08d}")

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run = _resolve(args, env)
    training = Timed(run, env)
    training.fit()
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    records = [json.loads(x) for x in (run.output / "metrics.jsonl").read_text().splitlines()]
    n_params = sum(int(getattr(p, "ds_numel", p.numel())) for p in training.engine.module.parameters())
    result = {
        "steps_per_s": rate(marks, warmup),
        "peak_gpu_bytes": peak,
        "params": n_params,
        "records": records[-3:],
        "loss_scale_first_last": [scales[0], scales[-1]] if scales else None,
        "final_loss": next((r["loss"] for r in reversed(records) if "loss" in r), None),
        "deepspeed_config": run.deepspeed,
        "hf_config": training.hf_config,
        "optimizer": type(
            getattr(training.engine.optimizer, "optimizer", training.engine.optimizer)
        ).__name__,
    }
    training.engine.destroy()
    del training
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def run_plain(paths: dict[str, str], seq: int, micro: int, steps: int, warmup: int) -> dict[str, Any]:
    """The loop a user writes without any framework: autocast bf16, fused AdamW, clipping 1.0."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from scaling.data import DataConfig, build_train_stream, load_tokenizer

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    tok = load_tokenizer(paths["tokenizer"])
    stream = build_train_stream(DataConfig(train=[paths["corpus"]], seq_len=seq), tok, task="clm",
                                micro_batch=micro, dp_rank=0, dp_size=1, seed=0)  # fmt: skip
    batches = [{k: v.to(device) for k, v in next(stream).items()} for _ in range(steps)]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(paths["model"])).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=cuda)
    marks = []
    for batch in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        marks.append(time.perf_counter())
    out = {"steps_per_s": rate(marks, warmup), "final_loss": float(loss.detach())}
    del model, opt, batches
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def matmul_peak(dry: bool) -> float | None:
    import torch

    if torch.cuda.is_available():
        from scaling.engine.metrics import measure_matmul_peak

        return measure_matmul_peak()
    if not dry:
        return None
    a, b = torch.randn(256, 256), torch.randn(256, 256)  # the CPU stand-in, so the code path runs in CI
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    return 2 * 256**3 * 10 / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench gpu_check")
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny model on CPU: checks the code, not the GPU"
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps (30; dry-run 2)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (10; dry-run 1)")
    parser.add_argument("--micro-batch", type=int, default=None, help="sequences per step (16; dry-run 2)")
    parser.add_argument("--seq-len", type=int, default=None, help="(2048; dry-run 64)")
    parser.add_argument("--ds-fused-adam", action="store_true", help="DeepSpeed's JIT FusedAdam (nvcc build)")
    parser.add_argument("--skip-fp16", action="store_true")
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    cuda = torch.cuda.is_available()
    dry = args.dry_run
    if not cuda and not dry:
        raise SystemExit("gpu_check: no CUDA device; use --dry-run for the CPU check")
    if dry:
        torch.set_num_threads(1)
    warmup = args.warmup if args.warmup is not None else (1 if dry else 10)
    steps = args.steps if args.steps is not None else (2 if dry else 30)
    micro = args.micro_batch or (2 if dry else 16)
    seq = args.seq_len or (64 if dry else 2048)
    total = warmup + steps + 1
    out_path = args.out or (ROOT / "bench" / "results" / ("gpu_check_dry.json" if dry else "gpu_check.json"))
    import deepspeed
    import transformers

    report: dict[str, Any] = {
        "mode": "dry-run (CPU, tiny model: checks the code path only)" if dry else "gpu",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "versions": {
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "transformers": transformers.__version__,
            "cuda": torch.version.cuda,
        },
        "setup": {"seq_len": seq, "micro_batch": micro, "warmup": warmup, "timed_steps": steps, "zero": 1},
        "goal": f"MFU >= {GOAL_MFU}% of {DATASHEET / 1e12:.0f} TFLOP/s bf16",
    }
    log(f"{report['device']} torch {torch.__version__} deepspeed {deepspeed.__version__}")
    from scaling.distributed import LaunchEnv
    from scaling.engine import dist as dist_setup
    from scaling.engine.metrics import flops_per_token

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        paths = prepare(work, dry)
        log(f"corpus + tokenizer in {time.perf_counter() - started:.0f} s")
        peak = matmul_peak(dry)
        report["measured_matmul_flops"] = peak
        log(f"measured matmul peak: {peak / 1e12 if peak else float('nan'):.1f} TFLOP/s")
        from tests.harness import free_port

        env = LaunchEnv(master_port=free_port())
        dist_setup.init_process_group(env, timeout_s=600)
        try:
            ours = run_ours(
                args_for(paths, work / "bf16", "bf16", seq, micro, total, cuda, args.ds_fused_adam),
                env,
                warmup,
            )
            cfg = ours.pop("hf_config")
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            fpt = flops_per_token(
                ours["params"], cfg.num_hidden_layers, cfg.num_attention_heads, head_dim, seq
            )
            tps = ours["steps_per_s"] * micro * seq
            ours.update(tokens_per_s=tps, flops_per_token=fpt, mfu_pct=100 * tps * fpt / DATASHEET,
                        mfu_pct_of_measured=100 * tps * fpt / peak if peak else None)  # fmt: skip
            report["bf16"] = ours
            log(f"ours bf16: {tps:,.0f} tokens/s, {ours['params'] / 1e9:.3f}B params, MFU {ours['mfu_pct']:.1f}% "
                f"of datasheet, {ours['mfu_pct_of_measured'] or float('nan'):.1f}% of measured matmul; "
                f"optimizer {ours['optimizer']}")  # fmt: skip
            # Peak memory vs the estimate for the same shape, layout and resolved JSON.
            from scaling.config.estimate import Layout, estimate, model_shape

            shape = model_shape(paths["model"])
            est = estimate(
                shape, Layout(seq_len=seq, micro_batch=micro), ours.pop("deepspeed_config"), "bf16"
            )
            report["memory"] = {
                "peak_gpu_bytes": ours["peak_gpu_bytes"],
                "estimate_total_bytes": est.gpu_total,
                "estimate_model_states_bytes": est.gpu_model_states,
                "estimate_activation_bytes": est.gpu_activations,
                "measured_over_estimate": (ours["peak_gpu_bytes"] / est.gpu_total)
                if ours["peak_gpu_bytes"]
                else None,
                "note": "activations counted without stored attention scores (fused SDPA attention)"
                if shape.fused_attention
                else "activations counted with stored attention scores (eager attention, 5as/h term)",
            }
            if ours["peak_gpu_bytes"]:
                log(f"peak memory {ours['peak_gpu_bytes'] / 2**30:.1f} GiB vs estimate {est.gpu_total / 2**30:.1f} GiB "
                    f"(model states {est.gpu_model_states / 2**30:.1f})")  # fmt: skip
            if cuda and not args.skip_fp16:
                fp16_steps = max(warmup // 2, 1) + max(steps // 3, 2) + 1
                fp16 = run_ours(args_for(paths, work / "fp16", "fp16", seq, micro, fp16_steps, cuda, args.ds_fused_adam),
                                env, max(warmup // 2, 1))  # fmt: skip
                fp16.pop("hf_config"), fp16.pop("deepspeed_config")
                fp16["tokens_per_s"] = fp16["steps_per_s"] * micro * seq
                report["fp16"] = fp16
                log(f"fp16 (dynamic loss scale {fp16['loss_scale_first_last']}): {fp16['tokens_per_s']:,.0f} tokens/s, "
                    f"final loss {fp16['final_loss']}")  # fmt: skip
            else:
                report["fp16"] = "skipped (needs a GPU)" if not cuda else "skipped"
                log(f"fp16: {report['fp16']}")
        finally:
            dist_setup.teardown()
        if not args.skip_plain:
            plain = run_plain(paths, seq, micro, total, warmup)
            plain["tokens_per_s"] = plain["steps_per_s"] * micro * seq
            report["plain_pytorch"] = plain
            report["ours_over_plain"] = report["bf16"]["tokens_per_s"] / plain["tokens_per_s"]
            log(
                f"plain PyTorch loop: {plain['tokens_per_s']:,.0f} tokens/s; ours/plain {report['ours_over_plain']:.3f}"
            )
    report["met"] = None if dry else report["bf16"]["mfu_pct"] >= GOAL_MFU
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    log(f"MFU {report['bf16']['mfu_pct']:.2f}% (goal {GOAL_MFU}%: {'n/a in dry-run' if dry else report['met']}); "
        f"wrote {out_path}")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
