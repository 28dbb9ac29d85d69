"""Model inputs and outputs of the compression commands.

Inputs: an HF model directory, one of our compressed outputs, or a training checkpoint (exported to an HF
directory first by the engine's `export_checkpoint`). Outputs: a directory with the model, its tokenizer
and `compression.json`, written into a temporary sibling and renamed at the end so a failure leaves nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.compress.errors import CompressUserError, NotAModelError
from scaling.files import apply_umask, copy_contained

MANIFEST = "compression.json"
FORMAT_HF = "hf"
"""Plain transformers checkpoint (pruned or distilled models)."""
FORMAT_WOQ = "inc-woq"
"""INC weight-only quantized: `quantized_weight.pt` + `qconfig.json`, rebuilt on the original architecture."""
FORMAT_PT2E = "inc-pt2e"
"""INC PT2E (dynamic/static int8): an exported program taking (input_ids, attention_mask)."""

TASK_SUFFIXES = {
    "ForCausalLM": "clm",
    "LMHeadModel": "clm",
    "ForMaskedLM": "mlm",
    "ForSequenceClassification": "seq-cls",
}
FEATURES = "features"
"""Task of a headless encoder (e.g. BertModel): outputs are hidden states, no perplexity or accuracy."""


@dataclass
class LoadedModel:
    """A model ready for evaluation or further compression, with what is needed to feed it."""

    model: Any
    """The torch module (an HF model, or an exported graph module for PT2E outputs)."""
    tokenizer: Any
    """The tokenizer saved next to the model (None if the directory has none)."""
    task: str
    """clm, mlm, seq-cls or features."""
    path: Path
    """Directory it was loaded from."""
    format: str = FORMAT_HF
    """One of FORMAT_HF, FORMAT_WOQ, FORMAT_PT2E."""
    manifest: dict[str, Any] = field(default_factory=dict)
    """The compression.json of our outputs; empty for plain HF directories."""


def is_training_checkpoint(path: Path) -> bool:
    """The engine's layout: a step dir (`manifest.json` + `scaling/`), a checkpoints root with a `latest`
    pointer, or a run dir holding `checkpoints/latest`."""
    return (
        ((path / "manifest.json").is_file() and (path / "scaling").is_dir())
        or (path / "latest").is_file()
        or (path / "checkpoints" / "latest").is_file()
    )


def resolve_model_dir(path: str | Path, scratch: Path) -> Path:
    """Return an HF-style directory for `path`, exporting a training checkpoint into `scratch` if needed."""
    p = Path(path)
    if not p.exists():
        raise NotAModelError(f"{p}: no such file or directory")
    if not p.is_dir():
        raise NotAModelError(
            f"{p}: not a directory (expected an HF model directory or a training checkpoint)"
        )
    if (p / "config.json").is_file():
        return p
    if is_training_checkpoint(p):
        return _export_checkpoint(p, scratch)
    raise NotAModelError(
        f"{p}: not a model directory (no config.json) and not a training checkpoint "
        "(no manifest.json + scaling/, no latest file)"
    )


def _export_checkpoint(checkpoint: Path, scratch: Path) -> Path:
    try:
        from scaling.checkpoint.export import export_checkpoint
    except ImportError:
        raise CompressUserError(
            f"{checkpoint} is a training checkpoint, but checkpoint export (scaling.checkpoint.export) is not "
            "available in this install; export it to an HF directory first and pass that"
        ) from None
    out = scratch / "exported"
    return Path(export_checkpoint(checkpoint, out))


def task_of_architecture(arch: str) -> str:
    for suffix, task in TASK_SUFFIXES.items():
        if arch.endswith(suffix):
            return task
    return FEATURES


def read_manifest(path: Path) -> dict[str, Any]:
    f = path / MANIFEST
    return json.loads(f.read_text()) if f.is_file() else {}


def model_class(config: Any) -> Any:
    """The transformers class named in config.architectures (what save_pretrained recorded)."""
    import transformers

    archs = getattr(config, "architectures", None) or []
    if not archs:
        return transformers.AutoModel
    cls = getattr(transformers, archs[0], None)
    if cls is None:
        raise NotAModelError(
            f"architecture {archs[0]!r} is not known to transformers {transformers.__version__}"
        )
    return cls


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError):
        return None


def load_hf(path: Path) -> LoadedModel:
    """Load a plain HF directory in fp32, with the class its config names."""
    import torch
    from transformers import AutoConfig

    from scaling.compat.safe_load import restricted_torch_load

    config = AutoConfig.from_pretrained(str(path))
    cls = model_class(config)
    with restricted_torch_load():  # a received pytorch_model.bin is a pickle too
        model = cls.from_pretrained(str(path), dtype=torch.float32).eval()
    task = task_of_architecture(type(model).__name__)
    return LoadedModel(model, load_tokenizer(path), task, path, FORMAT_HF, read_manifest(path))


def load_compressed(path: str | Path, scratch: Path | None = None) -> LoadedModel:
    """Reload any of our outputs (or an HF directory / training checkpoint) with equal outputs."""
    p = Path(path)
    manifest = read_manifest(p) if p.is_dir() else {}
    fmt = manifest.get("format", FORMAT_HF)
    if fmt == FORMAT_HF:
        with _scratch(scratch) as tmp:
            return load_hf(resolve_model_dir(p, tmp))
    from scaling.compress import inc

    task = manifest.get("task", "clm")
    if fmt == FORMAT_WOQ:
        model = inc.load_woq(p, conv1d_to_linear=bool(manifest.get("conv1d_to_linear")))
    elif fmt == FORMAT_PT2E:
        model = inc.load_pt2e(p)
    else:
        raise NotAModelError(f"{p}: unknown compression format {fmt!r} in {MANIFEST}")
    return LoadedModel(model, load_tokenizer(p), task, p, fmt, manifest)


@contextlib.contextmanager
def _scratch(given: Path | None) -> Iterator[Path]:
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="scaling-compress-") as tmp:
        yield Path(tmp)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("scaling", "torch", "transformers", "neural-compressor", "neural-compressor-pt", "torchao"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


@contextlib.contextmanager
def atomic_output(output: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside `output`; on success it replaces `output`, on any error it is removed."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise CompressUserError(f"{output} already exists (pass --overwrite to replace it)")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    apply_umask(tmp)
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(),
        **manifest,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")


def copy_tokenizer(source_dir: Path, target_dir: Path, tokenizer: Any) -> None:
    if tokenizer is not None:
        tokenizer.save_pretrained(str(target_dir))
        return
    # No loadable tokenizer: still carry the files, so a later tool can try.
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source_dir / name).is_file():
            copy_contained(source_dir / name, target_dir / name, source_dir)
