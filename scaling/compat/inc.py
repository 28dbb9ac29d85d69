"""Intel Neural Compressor's PT2E path: a patch of torchao's X86 quantizer, which INC drives."""

from __future__ import annotations

import functools
from typing import Any

_PATCHED_FLAG = "_scaling_patched"


def skip_unannotatable_linears() -> bool:
    """Make torchao's X86 quantizer skip the linears it cannot annotate instead of failing the whole export.

    `X86InductorQuantizer._annotate_linear_unary` raises IndexError/ValueError on some BERT linears (a
    linear whose user pattern it does not expect); those stay in float. Idempotent. Returns False when
    torchao is not installed (nothing to patch).
    """
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    except ImportError:
        return False
    quantizer = xiq.X86InductorQuantizer
    if getattr(quantizer, _PATCHED_FLAG, False):
        return True
    original = quantizer._annotate_linear_unary

    @functools.wraps(original)  # keeps the original reachable (inspect.unwrap) for the smoke test
    def safe(self: Any, gm: Any, cfg: Any, filter_fn: Any = None) -> Any:
        try:
            return original(self, gm, cfg, filter_fn)
        except (IndexError, ValueError):
            return None

    setattr(quantizer, "_annotate_linear_unary", safe)  # noqa: B010 -- a deliberate monkeypatch
    setattr(quantizer, _PATCHED_FLAG, True)
    return True
