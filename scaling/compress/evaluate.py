"""Measurements of one model: quality (perplexity / accuracy), size, parameters, CPU latency and throughput."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from scaling.compress.config import EvalConfig
from scaling.compress.data import read_documents
from scaling.compress.errors import CompressUserError
from scaling.compress.feed import Batch, block_batches, cls_batches, lm_blocks, main_output
from scaling.compress.model_io import FEATURES, FORMAT_PT2E, LoadedModel

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pt2", ".pth")


def perplexity(
    model: Any, batches: list[Batch], task: str, seed: int = 0, mask_token_id: int | None = None
) -> float:
    """clm: exp(mean next-token NLL). mlm: exp(mean NLL of 15% masked tokens, fixed seed)."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in batches:
            if task == "clm":
                logits = main_output(model, b.input_ids, b.attention_mask)
                loss = F.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                    b.input_ids[:, 1:].reshape(-1),
                    reduction="sum",
                )
                total += loss.item()
                count += b.input_ids[:, 1:].numel()
            else:
                if mask_token_id is None:
                    raise CompressUserError("mlm perplexity needs a tokenizer with a mask token")
                chosen = torch.rand(b.input_ids.shape, generator=gen) < 0.15
                chosen[:, 0] = True  # at least one masked position per row
                masked = b.input_ids.masked_fill(chosen, mask_token_id)
                logits = main_output(model, masked, b.attention_mask)
                total += F.cross_entropy(logits[chosen].float(), b.input_ids[chosen], reduction="sum").item()
                count += int(chosen.sum())
    return math.exp(total / max(count, 1))


def accuracy(model: Any, batches: list[Batch]) -> float:
    import torch

    right, seen = 0, 0
    with torch.no_grad():
        for b in batches:
            pred = main_output(model, b.input_ids, b.attention_mask).argmax(-1)
            right += int((pred == b.labels).sum())
            seen += b.labels.numel()
    return right / max(seen, 1)


def cosine_to(model: Any, reference: list[Any], batches: list[Batch]) -> float:
    """Mean cosine of mean-pooled outputs against reference outputs (headless encoders, tuning)."""
    import torch

    sims = []
    with torch.no_grad():
        for ref, b in zip(reference, batches, strict=True):
            out = main_output(model, b.input_ids, b.attention_mask)
            sims.append(
                torch.nn.functional.cosine_similarity(_pool(out, b), _pool(ref, b), dim=-1).mean().item()
            )
    return sum(sims) / len(sims)


def _pool(hidden: Any, b: Batch) -> Any:
    mask = b.attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def quality_batches(loaded: LoadedModel, task: str, cfg: EvalConfig) -> list[Batch]:
    if cfg.data is None:
        raise CompressUserError("quality needs --data")
    if task == "seq-cls":
        docs = read_documents(cfg.data, limit=cfg.max_samples, label_column=cfg.label_column)
        return cls_batches(docs, _tokenizer(loaded), cfg.seq_len, cfg.batch_size)
    docs = read_documents(cfg.data)
    return block_batches(lm_blocks(docs, _tokenizer(loaded), cfg.seq_len, cfg.max_samples), cfg.batch_size)


def _tokenizer(loaded: LoadedModel) -> Any:
    if loaded.tokenizer is None:
        raise CompressUserError(
            f"{loaded.path}: no tokenizer saved with the model; one is needed to read --data"
        )
    return loaded.tokenizer


def quality(loaded: LoadedModel, task: str, batches: list[Batch], cfg: EvalConfig) -> dict[str, float]:
    if task in ("clm", "mlm"):
        mask_id = getattr(loaded.tokenizer, "mask_token_id", None)
        return {"perplexity": perplexity(loaded.model, batches, task, cfg.seed, mask_id)}
    if task == "seq-cls":
        return {"accuracy": accuracy(loaded.model, batches)}
    return {}


def weight_bytes(path: Path) -> int:
    """Bytes of weight files on disk (tokenizer and metadata excluded, so models compare fairly)."""
    from scaling.compress.verify import CHECK_FILE

    return sum(
        f.stat().st_size
        for f in Path(path).rglob("*")
        if f.is_file()
        and f.suffix in WEIGHT_SUFFIXES
        and f.name != CHECK_FILE
        and "report" not in f.relative_to(path).parts
    )


def parameter_count(loaded: LoadedModel) -> dict[str, int]:
    """Float parameters plus elements of quantized weights (counted once per logical weight)."""
    if loaded.format == FORMAT_PT2E:
        return {"parameters": int(loaded.manifest.get("source_parameters", 0))}
    total = sum(p.numel() for p in _unique_params(loaded.model))
    nonzero = sum(int((p != 0).sum()) for p in _unique_params(loaded.model))
    quantized = 0
    for module in loaded.model.modules():
        if hasattr(module, "in_features") and hasattr(module, "qweight"):
            # INC keeps the bias as a buffer, so it is not among parameters() either; it also adds an
            # all-zero bias to layers that had none, which is not a parameter of the model.
            bias = getattr(module, "bias", None)
            bias_params = bias.numel() if bias is not None and bool(bias.any()) else 0
            quantized += module.in_features * module.out_features + bias_params
    return {"parameters": total + quantized, "nonzero_parameters": nonzero + quantized}


def _unique_params(model: Any) -> list[Any]:
    seen, out = set(), []
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def speed(loaded: LoadedModel, cfg: EvalConfig) -> dict[str, float]:
    """Median, fastest and slowest latency of `runs` forwards of [batch_size, seq_len] after `warmup`
    forwards: the spread says how far a difference between two models can be trusted on this host."""
    import torch

    vocab = 100
    if loaded.tokenizer is not None:
        vocab = min(len(loaded.tokenizer), 1000)
    gen = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(5, max(vocab, 6), (cfg.batch_size, cfg.seq_len), generator=gen)
    mask = torch.ones_like(ids)
    times = []
    with torch.no_grad():
        for i in range(cfg.warmup + cfg.runs):
            start = time.perf_counter()
            main_output(loaded.model, ids, mask)
            if i >= cfg.warmup:
                times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "latency_ms": median * 1000,
        "latency_min_ms": min(times) * 1000,
        "latency_max_ms": max(times) * 1000,
        "throughput_tokens_per_s": cfg.batch_size * cfg.seq_len / median,
        "threads": torch.get_num_threads(),
    }


def evaluate_loaded(loaded: LoadedModel, cfg: EvalConfig) -> dict[str, Any]:
    task = cfg.task or loaded.task
    if cfg.task and loaded.task not in (cfg.task, FEATURES) and loaded.format != FORMAT_PT2E:
        raise CompressUserError(
            f"--task {cfg.task}: the model is a {loaded.task} model ({type(loaded.model).__name__})"
        )
    if task == FEATURES and cfg.data is not None:
        raise CompressUserError(
            f"{type(loaded.model).__name__} has no LM or classification head: pass --task or evaluate without --data"
        )
    results: dict[str, Any] = {"model": str(loaded.path), "task": task, "format": loaded.format}
    method = loaded.manifest.get("method")
    if method:
        results["method"] = method
    if cfg.data is not None:
        results.update(quality(loaded, task, quality_batches(loaded, task, cfg), cfg))
        results["data"] = cfg.data
    results["size_bytes"] = weight_bytes(loaded.path)
    results.update(parameter_count(loaded))
    if cfg.speed:
        results.update(speed(loaded, cfg))
    results["settings"] = {
        k: v
        for k, v in asdict(cfg).items()
        if k in ("batch_size", "seq_len", "max_samples", "warmup", "runs")
    }
    return results


def evaluate_path(path: str | Path, cfg: EvalConfig) -> dict[str, Any]:
    import tempfile

    from scaling.compress.model_io import load_compressed

    # A training checkpoint is exported into the scratch dir, which must outlive the size measurement.
    with tempfile.TemporaryDirectory(prefix="scaling-eval-") as tmp:
        results = evaluate_loaded(load_compressed(path, scratch=Path(tmp)), cfg)
    results["model"] = str(path)
    return results
