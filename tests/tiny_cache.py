"""The tiny compression models, built once per machine: a directory keyed by everything that shapes them."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path


def tiny_models_cache() -> Path:
    """Where built tiny models persist between sessions: $SCALING_TEST_CACHE, else ~/.cache/scaling-tests."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scaling-tests"
    return Path(os.environ.get("SCALING_TEST_CACHE") or default)


def _tiny_models_key() -> str:
    """Changes whenever the models could: the builder's source, the libraries that train and save them, and
    Python (its pydoc topics are the training text)."""
    from importlib.metadata import version

    import tiny

    digest = hashlib.sha256(Path(tiny.__file__).read_bytes())
    digest.update(sys.version.encode())
    for package in ("torch", "transformers", "tokenizers", "safetensors"):
        digest.update(f"{package}={version(package)}".encode())
    return digest.hexdigest()[:16]


def build_tiny_models(cache: Path) -> dict[str, Path]:
    """The four tiny models of `tests/tiny.py`, built into `cache` once; a directory appears only
    complete (built aside, then renamed), so concurrent sessions either reuse it or build their own copy."""
    import tiny

    root = cache / f"tiny-{_tiny_models_key()}"
    models = {}
    for kind in tiny.KINDS:
        target = root / kind
        if not (target / "config.json").is_file():
            root.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".{kind}.", dir=root))
            try:
                tiny.build(kind, scratch / kind)
                with contextlib.suppress(OSError):  # another session finished first: its copy is as good
                    (scratch / kind).rename(target)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        models[kind] = target
    return models
