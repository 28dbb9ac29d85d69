"""Reading pickled checkpoint files without running code from them.

A `.pt` file is a pickle: loaded with `torch.load(weights_only=False)`, which DeepSpeed 0.19.8 passes in every
loader (engine resume, zero_to_fp32, ds_to_universal, universal loading) and torch.export passes for pickled
PT2 weights, it can call any function. Here every such load goes through torch's weights-only unpickler with
an allowlist of exactly the non-tensor classes DeepSpeed writes into its model and optimizer states (and numpy's
array reconstruction, which rank states of earlier versions hold). Anything else is refused with a
`CheckpointError` naming the file and the global it asked for; nothing in the file runs.

- `load_weights_only(path)`: one file.
- `restricted_torch_load()`: within the block, `torch.load` is that loader for every caller, so DeepSpeed's and
  torch.export's loaders read safely without being changed. DeepSpeed calls `torch.load` through the module
  attribute, which is what is replaced.
- `unsafe_globals(path)`: what a file would import beyond the allowlist, read without unpickling (for
  `scaling checkpoint verify` and the check every command runs before loading a checkpoint).
"""

from __future__ import annotations

import contextlib
import pickle
import re
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scaling.errors import CheckpointError

DEEPSPEED_CLASSES = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)
"""The classes DeepSpeed 0.19.8 pickles into model-states and optimizer-states files (loss scaler, ZeRO stage,
parameter fragment addresses of the optimizer's flat groups), found by listing every global of the files of
ZeRO-0..3, bf16/fp32, pipeline and universal checkpoints (tests/unit/test_safe_load.py keeps the list honest)."""

_NUMPY_GLOBALS = (
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
)
# numpy 1.x wrote its array constructor under numpy.core; files written then name it so.
_NUMPY_ALIASES = {"numpy.core.multiarray._reconstruct": "numpy._core.multiarray._reconstruct"}

_lock = threading.Lock()
_patched = 0
_original_load: Any = None


def _allowed() -> list[Any]:
    import importlib

    import numpy as np

    out: list[Any] = []
    for module, name in (*DEEPSPEED_CLASSES, *_NUMPY_GLOBALS):
        out.append(getattr(importlib.import_module(module), name))
    out += [(out[len(DEEPSPEED_CLASSES)], alias) for alias in _NUMPY_ALIASES]
    # numpy pickles a dtype through its class (numpy.dtypes.UInt32DType, ...); all are plain data types.
    out += [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUV"]
    return out


def allowed_names() -> set[str]:
    """Fully qualified names of every global the loaders accept beyond torch's own safe set."""
    names = {f"{module}.{name}" for module, name in (*DEEPSPEED_CLASSES, *_NUMPY_GLOBALS)}
    names |= set(_NUMPY_ALIASES)
    for entry in _allowed():
        if isinstance(entry, type):
            names.add(f"{entry.__module__}.{entry.__qualname__}")
    return names


def _torch_load() -> Any:
    import torch

    return _original_load if _original_load is not None else torch.load


def load_weights_only(f: Any, map_location: Any = "cpu", mmap: bool | None = None) -> Any:
    """`torch.load(f)` restricted to tensors, containers, DeepSpeed's state classes and numpy arrays."""
    import torch

    try:
        with torch.serialization.safe_globals(_allowed()):
            return _torch_load()(f, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(_refusal(f, str(err))) from None


def _refusal(f: Any, message: str) -> str:
    name = str(f) if isinstance(f, (str, Path)) else getattr(f, "name", "a checkpoint file")
    found = re.search(r"(?:Unsupported global|GLOBAL) (?:GLOBAL )?([\w.]+)", message)
    what = f"it asks for {found.group(1)}, " if found else ""
    return (
        f"{name}: refused to load: {what}which is not data a checkpoint holds (a pickle that would run code); "
        "only tensors, containers and DeepSpeed's own state classes are read (docs/security.md)"
    )


@contextlib.contextmanager
def restricted_torch_load() -> Iterator[None]:
    """Within the block, every `torch.load` call (DeepSpeed's, torch.export's) is `load_weights_only`,
    whatever `weights_only` it passes. Nests; the original is restored when the outermost block ends."""
    global _patched, _original_load
    import torch

    def load(f: Any, map_location: Any = None, pickle_module: Any = None, **kwargs: Any) -> Any:
        return load_weights_only(f, map_location=map_location, mmap=kwargs.get("mmap"))

    with _lock:
        if _patched == 0:
            _original_load = torch.load
            torch.load = load
        _patched += 1
    try:
        yield
    finally:
        with _lock:
            _patched -= 1
            if _patched == 0:
                torch.load = _original_load
                _original_load = None


def unsafe_globals(path: Path) -> list[str]:
    """The globals a torch checkpoint file would import beyond torch's safe set and ours, found by reading its
    pickle opcodes without executing them. A file that is not a torch zip checkpoint reports itself."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    if not zipfile.is_zipfile(path):
        # torch's own safe set: a private function (get_unsafe_globals_in_checkpoint reads only zip files)
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = allowed_names() | set(_get_allowed_globals())
        return [name for name in _bare_pickle_globals(path) if name not in allowed]
    try:
        found = get_unsafe_globals_in_checkpoint(str(path))
    except (RuntimeError, ValueError, pickle.UnpicklingError, KeyError) as err:
        return [f"<unreadable: {err}>"]
    allowed = allowed_names()
    return [name for name in found if name not in allowed]


def refuse_unsafe_pt2(path: Path) -> None:
    """Refuse a torch.export archive holding entries that torch.export.load unpickles without restriction
    (`pickle.loads` of opaque objects, TorchScript objects; our quantized models hold neither). Its pickled
    weights go through `torch.load`, which `restricted_torch_load` covers."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as err:
        raise CheckpointError(f"{path}: not a torch.export archive ({err})") from None
    bad = [n for n in names if "/constants/opaque_obj_" in n or "/constants/custom_obj_" in n]
    if bad:
        raise CheckpointError(
            f"{path}: refused to load: it holds pickled objects ({bad[0]}) that torch.export would unpickle "
            "without restriction (docs/security.md)"
        )


def _bare_pickle_globals(path: Path) -> list[str]:
    """Globals of the pickles at the start of a file that is not a zip (torch's legacy format is a few pickles
    in a row, then raw storage bytes), read opcode by opcode without executing any. A global whose name is not
    a literal (built on the stack from memo entries) is reported as unresolvable."""
    import io
    import pickletools

    data = Path(path).read_bytes()
    stream, found = io.BytesIO(data), []
    while stream.tell() < len(data) and data[stream.tell() : stream.tell() + 1] == b"\x80":
        strings: list[str] = []
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL":
                    literal = len(strings) >= 2
                    found.append(".".join(strings[-2:]) if literal else "<unresolvable global>")
                elif isinstance(arg, str):
                    strings.append(arg)
                elif opcode.name in ("BINGET", "LONG_BINGET", "GET"):
                    strings.append("<memo>")
        except ValueError:  # not (or no longer) a pickle: raw bytes, which cannot run anything
            break
    return [name if "<memo>" not in name else "<unresolvable global>" for name in found]
