"""Quantization through Intel Neural Compressor: validation, calibration, sanity checks, output."""

from __future__ import annotations

import contextlib
import re
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from scaling.compress import inc, verify
from scaling.compress.config import (
    CALIBRATED,
    IPEX_METHODS,
    PT2E_METHODS,
    QUANT_METHODS,
    WOQ_METHODS,
    QuantizeConfig,
)
from scaling.compress.data import read_documents
from scaling.compress.errors import CompressionFailed, CompressUserError, UnsupportedError
from scaling.compress.evaluate import accuracy, cosine_to, perplexity
from scaling.compress.feed import Batch, TensorOut, calibration_batches, cls_batches, main_output
from scaling.compress.model_io import (
    FEATURES,
    FORMAT_HF,
    FORMAT_PT2E,
    FORMAT_WOQ,
    atomic_output,
    copy_tokenizer,
    load_hf,
    resolve_model_dir,
    write_manifest,
)

TUNE_GRID = ((4, 128), (4, 32), (8, -1))
"""(bits, group_size) tried by --tune, most compressed first; INC autotune stops at the first that passes."""
HARDWARE = {
    "rtn": "any CPU (weights dequantized on the fly: smaller files, no speed-up)",
    "gptq": "any CPU; needs calibration data and the accelerate package",
    "awq": "any CPU; needs calibration data (scale search finds no absorb layers on transformers 5, so clipping only)",
    "dynamic": "x86 CPU; experimental (PT2E, eager mode is slower; no size gain in INC 3.10)",
    "static": "x86 CPU; needs calibration data; experimental (PT2E, no size gain in INC 3.10)",
    "smoothquant": "Intel CPU + intel_extension_for_pytorch matching torch",
}


def validate(cfg: QuantizeConfig) -> None:
    """Reject impossible or known-broken combinations before touching any model."""
    m = cfg.method
    if m not in QUANT_METHODS:
        raise CompressUserError(f"unknown method {m!r} (choose from {', '.join(QUANT_METHODS)})")
    if m in IPEX_METHODS:
        inc.require_ipex(m)
    if m in WOQ_METHODS:
        if cfg.bits not in (4, 8):
            raise UnsupportedError(f"{m}: {cfg.bits}-bit weights are not supported (use 4 or 8)")
        if cfg.group_size != -1 and (cfg.group_size < 8 or cfg.group_size & (cfg.group_size - 1)):
            raise UnsupportedError(
                f"group size {cfg.group_size}: use -1 (per channel) or a power of two >= 8"
            )
        if cfg.bits == 8 and not cfg.sym:
            raise UnsupportedError(
                "8-bit asymmetric weight-only quantization is silently wrong in INC 3.10 "
                "((w - zp).to(int8) overflows when weights are unpacked); use --sym (8-bit symmetric loses nothing "
                "measurable) or 4-bit asymmetric"
            )
    if m in PT2E_METHODS:
        if cfg.bits != 8:
            raise UnsupportedError(f"{m} quantization is int8 only (got --bits {cfg.bits})")
        if cfg.tune:
            raise UnsupportedError("--tune searches weight-only settings; use it with rtn, gptq or awq")
    if m in CALIBRATED and not cfg.calib_data:
        raise CompressUserError(
            f"{m} needs calibration data: pass --calib-data SPEC (e.g. text.txt or data.jsonl:text)"
        )
    if cfg.tune and not (cfg.eval_data or cfg.calib_data):
        raise CompressUserError("--tune needs data to measure quality: pass --eval-data or --calib-data")
    if not 0 < cfg.max_quality_drop < 1:
        raise CompressUserError(f"--max-quality-drop {cfg.max_quality_drop}: must be a fraction in (0, 1)")
    if cfg.calib_samples < 1:
        raise CompressUserError("--calib-samples must be at least 1")


def quantize(
    source: str | Path, output: Path, cfg: QuantizeConfig, overwrite: bool = False
) -> dict[str, Any]:
    """Quantize `source` into `output`; returns the manifest written to compression.json."""
    validate(cfg)
    inc.api()  # a missing INC is reported before any model is loaded
    with tempfile.TemporaryDirectory(prefix="scaling-quantize-") as tmp:
        loaded = load_hf(resolve_model_dir(source, Path(tmp)))
        if loaded.format != FORMAT_HF:
            raise CompressUserError(
                f"{source} is already quantized ({loaded.manifest.get('method')}); quantize the float model"
            )
        model, task = loaded.model, loaded.task
        replaced_conv1d = inc.conv1d_to_linear(model)
        batches = _calibration(loaded, cfg)
        sanity = batches[0]
        with _torch_no_grad():
            reference = main_output(model, sanity.input_ids, sanity.attention_mask)
        linear_names = _linear_names(model, _skipped(model))
        float_linear = _float_linear_bytes(model, linear_names)
        # Counted now: INC quantizes in place, and packed weights are buffers, not parameters.
        source_parameters = sum(p.numel() for p in model.parameters())
        chosen = asdict(cfg)
        if cfg.method in PT2E_METHODS:
            qmodel = _pt2e(model, cfg, batches)
            fmt = FORMAT_PT2E
        else:
            qmodel, chosen, tuning = _woq(loaded, cfg, batches, Path(tmp))
            fmt = FORMAT_WOQ
        with _torch_no_grad():
            rel_err = _rel_err(main_output(qmodel, sanity.input_ids, sanity.attention_mask), reference)
        if not rel_err < cfg.max_rel_error:
            raise CompressionFailed(
                f"quantized outputs differ from float by {rel_err:.3f} (relative), above the sanity bound "
                f"{cfg.max_rel_error}; nothing written. Try 8-bit, a smaller group size or GPTQ"
            )
        manifest: dict[str, Any] = {
            "kind": "quantize",
            "format": fmt,
            "method": cfg.method,
            "task": task,
            "source": str(source),
            "architecture": type(model).__name__,
            "settings": chosen,
            "hardware": HARDWARE[cfg.method],
            "conv1d_to_linear": replaced_conv1d > 0,
            "source_parameters": source_parameters,
            "results": {"output_rel_error": rel_err},
        }
        if fmt == FORMAT_WOQ:
            stored, kept = _linear_bytes_after(qmodel, linear_names)
            manifest["results"].update(
                float_linear_bytes=float_linear,
                stored_linear_bytes=stored,
                linear_size_ratio=stored / float_linear,
            )
            manifest["float_linear_layers"] = kept
            if cfg.tune:
                manifest["tuning"] = tuning
        with atomic_output(output, overwrite) as out:
            if fmt == FORMAT_WOQ:
                inc.save_woq(qmodel, out)
            else:
                inc.save_pt2e(qmodel, (sanity.input_ids, sanity.attention_mask), out)
            verify.record(qmodel, sanity.input_ids, sanity.attention_mask, out)
            model.config.save_pretrained(str(out))
            copy_tokenizer(loaded.path, out, loaded.tokenizer)
            write_manifest(out, manifest)
    return manifest


@contextlib.contextmanager
def _torch_no_grad() -> Any:
    import torch

    with torch.no_grad():
        yield


def _calibration(loaded: Any, cfg: QuantizeConfig) -> list[Batch]:
    if cfg.calib_data:
        docs = read_documents(cfg.calib_data, limit=None if loaded.task != "seq-cls" else cfg.calib_samples)
        return calibration_batches(docs, loaded.tokenizer, loaded.task, cfg.seq_len, cfg.calib_samples)
    # RTN and dynamic need no statistics; random ids still drive dynamic's weight observers and the sanity check.
    import torch

    gen = torch.Generator().manual_seed(0)
    vocab = loaded.model.config.vocab_size
    ids = torch.randint(0, vocab, (min(cfg.calib_samples, 4), min(cfg.seq_len, 32)), generator=gen)
    return [Batch(ids, torch.ones_like(ids))]


def _rel_err(q: Any, ref: Any) -> float:
    return float((q.float() - ref.float()).norm() / ref.float().norm().clamp(min=1e-12))


def _skipped(model: Any) -> list[str]:
    """Names of modules kept float: the output embeddings (tied to the input embeddings in most LMs)."""
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [name for name, mod in model.named_modules() if out_emb is not None and mod is out_emb]


def _linear_names(model: Any, skip: list[str]) -> list[str]:
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in skip]


def _float_linear_bytes(model: Any, names: list[str]) -> int:
    return sum(model.get_submodule(n).weight.numel() * 4 for n in names)


def _is_quantized(module: Any, types: tuple[type, ...]) -> bool:
    # AWQ wraps each quantized layer in a MulLinear holding the input scale and the quantized `.linear`.
    return isinstance(module, types) or isinstance(getattr(module, "linear", None), types)


def _linear_bytes_after(qmodel: Any, names: list[str]) -> tuple[int, list[str]]:
    """Stored bytes of the linear layers after quantization, and the names left float.

    Quantized layers count packed weights, scales, zero points, group indices and AWQ input scales; layers
    left float (e.g. GPTQ leaves poolers and classifiers outside the transformer blocks) count 4 bytes a
    weight. Biases are excluded: they stay float either way."""
    types = inc.woq_module_types()
    total, kept = 0, []
    for name in names:
        module = qmodel.get_submodule(name)
        if _is_quantized(module, types):
            total += sum(
                b.numel() * b.element_size()
                for n, b in module.named_buffers()
                if n.rsplit(".", 1)[-1] != "bias"
            )
        else:
            kept.append(name)
            total += module.weight.numel() * 4
    return total, kept


def _verify_replaced(qmodel: Any, expected: list[str]) -> None:
    """INC can hand back float layers without a word (GPT-2 Conv1D, a failed load); never ship that.
    Every linear inside the repeated transformer blocks must now be a quantized module."""
    types = inc.woq_module_types()
    in_blocks = [n for n in expected if re.search(r"\.\d+\.", n)] or expected
    left = [n for n in in_blocks if not _is_quantized(qmodel.get_submodule(n), types)]
    if not in_blocks or left:
        raise CompressionFailed(
            f"{len(left)} of {len(in_blocks)} linear layers in the transformer blocks were not quantized "
            f"({', '.join(left[:4])}); nothing written"
        )


def _woq(
    loaded: Any, cfg: QuantizeConfig, batches: list[Batch], work: Path
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    model = loaded.model
    skip = _skipped(model)
    expected = _linear_names(model, skip)

    def calibrate(m: Any) -> None:
        with _torch_no_grad():
            for b in batches:
                main_output(m, b.input_ids, b.attention_mask)

    calib = calibrate if cfg.method in ("gptq", "awq") else None
    example = batches[0].input_ids[:2]
    chosen = asdict(cfg)
    tuning: dict[str, Any] = {}
    if not cfg.tune:
        config = inc.woq_config(cfg.method, cfg.bits, cfg.group_size, cfg.sym, work, skip)
        qmodel = inc.quantize_woq(model, config, cfg.method, calib, example)
    else:
        qmodel, tuning = _tune(loaded, cfg, skip, calib, example, work)
        chosen.update(bits=tuning["chosen"]["bits"], group_size=tuning["chosen"]["group_size"])
    _verify_replaced(qmodel, expected)
    return qmodel, chosen, tuning


def _tune(
    loaded: Any, cfg: QuantizeConfig, skip: list[str], calib: Any, example: Any, work: Path
) -> tuple[Any, dict[str, Any]]:
    """INC autotune over TUNE_GRID with our quality metric; fails if no setting meets the tolerance."""
    task = loaded.task
    spec = cfg.eval_data or cfg.calib_data
    assert spec is not None
    if task == "seq-cls":
        batches = cls_batches(
            read_documents(spec, limit=64, label_column=cfg.label_column), loaded.tokenizer, cfg.seq_len, 8
        )
    else:
        docs = read_documents(spec)
        batches = calibration_batches(docs, loaded.tokenizer, task, cfg.seq_len, 16, 8)
    reference: list[Any] = []  # float outputs to compare with, for feature extractors only
    if task == FEATURES:
        with _torch_no_grad():
            reference = [main_output(loaded.model, b.input_ids, b.attention_mask) for b in batches]
    mask_id = getattr(loaded.tokenizer, "mask_token_id", None)

    def score(m: Any) -> float:
        # Higher is better for INC: 1/perplexity, accuracy, or cosine to the float outputs.
        if task in ("clm", "mlm"):
            return 1.0 / perplexity(m, batches, task, 0, mask_id)
        if task == "seq-cls":
            return accuracy(m, batches)
        return cosine_to(m, reference, batches)

    trials: list[dict[str, Any]] = []

    def eval_fn(m: Any) -> float:
        s = score(m)
        trials.append({"settings": _woq_settings(m), "score": s})
        return s

    # For perplexity a rise by d is a drop of 1/ppl by d/(1+d).
    d = cfg.max_quality_drop
    tolerable = d / (1 + d) if task in ("clm", "mlm") else d
    configs = [inc.woq_config(cfg.method, b, g, True, work, skip) for b, g in TUNE_GRID]
    qmodel = inc.autotune_woq(loaded.model, configs, tolerable, eval_fn, calib, example)
    baseline = trials[0]["score"]
    chosen = _woq_settings(qmodel)
    achieved = 1 - score(qmodel) / baseline
    if achieved > tolerable + 1e-9:
        best = min(trials[1:], key=lambda t: 1 - t["score"] / baseline)
        raise CompressionFailed(
            f"no setting in the tuning grid stays within --max-quality-drop {d}: the best "
            f"({best['settings']}) loses {1 - best['score'] / baseline:.3%} of the quality score "
            f"(allowed {tolerable:.3%}); nothing written"
        )
    return qmodel, {
        "grid": [{"bits": b, "group_size": g, "sym": True} for b, g in TUNE_GRID],
        "metric": {"clm": "1/perplexity", "mlm": "1/perplexity", "seq-cls": "accuracy"}.get(task, "cosine"),
        "baseline": baseline,
        "tolerable_loss": tolerable,
        "trials": trials[1:],
        "chosen": chosen,
    }


def _woq_settings(model: Any) -> dict[str, Any]:
    types = inc.woq_module_types()
    for module in model.modules():
        if isinstance(module, types):
            # INC stores per-channel quantization as one group spanning the whole input.
            per_channel = module.group_size in (-1, getattr(module, "in_features", None))
            return {"bits": module.bits, "group_size": -1 if per_channel else module.group_size}
    return {"bits": 32, "group_size": None}


def _pt2e(model: Any, cfg: QuantizeConfig, batches: list[Batch]) -> Any:
    wrapped = TensorOut.wrap(model)
    example = (batches[0].input_ids, batches[0].attention_mask)
    graph = inc.quantize_pt2e(
        wrapped,
        cfg.method,
        example,
        [(b.input_ids, b.attention_mask) for b in batches],
        max_batch=64,
        max_seq=max(cfg.seq_len, 512),
    )
    if inc.count_pt2e_quantized(graph) == 0:
        raise CompressionFailed(
            f"{cfg.method}: PT2E inserted no quantization into the graph; nothing written"
        )
    return graph
