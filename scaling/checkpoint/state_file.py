"""Our per-rank checkpoint state as data only: a safetensors file whose tensors are the state's tensors and
arrays, and whose metadata holds the rest as JSON.

Nothing in it is pickled, so reading a received checkpoint cannot run code. JSON has no tuples, non-string
keys, arrays or bytes, which the state holds (python's and numpy's generator states are tuples with an array,
an optimizer state has integer keys); those are written as one-key objects (`{"__tuple__": [...]}`, ...) and
rebuilt exactly on read. Checkpoints of earlier versions (`rank<r>.pt`, a pickle) are read with torch's
weights-only unpickler, which builds only tensors, containers and numpy arrays.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from scaling.errors import CheckpointError
from scaling.files import apply_umask

SUFFIX = ".safetensors"
LEGACY_SUFFIX = ".pt"
_META_KEY = "scaling_rank_state"
_FORMAT = 1
_NUMERIC_DTYPE = re.compile(r"^[<>|=]?[biufc]\d{1,2}$")


def rank_file(directory: Path, rank: int) -> Path:
    return directory / f"rank{rank:05d}{SUFFIX}"


def rank_files(directory: Path) -> list[Path]:
    """Every rank's state file in rank order (the earlier `.pt` files when the checkpoint has no other)."""
    files = sorted(directory.glob(f"rank*{SUFFIX}"))
    return files or sorted(directory.glob(f"rank*{LEGACY_SUFFIX}"))


def find_rank_file(directory: Path, rank: int) -> Path | None:
    for path in (rank_file(directory, rank), directory / f"rank{rank:05d}{LEGACY_SUFFIX}"):
        if path.is_file():
            return path
    return None


def write_rank_state(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` (a `.safetensors` name) via a temporary file and a rename."""
    import os

    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    tree = _encode(state, tensors)
    tmp = path.with_name(path.name + ".tmp")
    meta = json.dumps({"format": _FORMAT, "state": tree}, separators=(",", ":"))
    save_file(tensors, str(tmp), metadata={_META_KEY: meta})
    apply_umask(tmp)  # safetensors creates its files 0600; the checkpoint's other files follow the umask
    os.replace(tmp, path)


def read_rank_state(path: Path) -> dict[str, Any]:
    """The state written by `write_rank_state`, or the pickled dict of an earlier version, read safely."""
    if path.suffix == LEGACY_SUFFIX:
        from scaling.compat.safe_load import load_weights_only

        state = load_weights_only(path)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: not a rank state (a {type(state).__name__})")
        return state
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = (handle.metadata() or {}).get(_META_KEY)
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable rank state ({err})") from None
    if meta is None:
        raise CheckpointError(f"{path}: not a rank state (no {_META_KEY} metadata)")
    try:
        record = json.loads(meta)
        state = _decode(record["state"], tensors)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: malformed rank state ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a rank state")
    return state


def _encode(value: Any, tensors: dict[str, Any]) -> Any:
    import numpy as np
    import torch

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        name = str(len(tensors))
        # safetensors refuses views sharing storage; a state is small, so copies are cheap.
        tensors[name] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": name}
    if isinstance(value, np.ndarray):
        name = str(len(tensors))
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value).copy())
        return {"__ndarray__": name}
    if isinstance(value, np.generic):
        return {"__npscalar__": value.dtype.str, "value": value.item()}
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"rank state holds a {type(value).__name__}, which a checkpoint cannot store as data")


def _decode(value: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy()
    if "__npscalar__" in value:
        import numpy as np

        code = value["__npscalar__"]
        if not (isinstance(code, str) and _NUMERIC_DTYPE.match(code)):
            raise ValueError(f"not a numeric numpy type: {code!r}")
        return np.dtype(code).type(value["value"])
    if "__bytes__" in value:
        return base64.b64decode(value["__bytes__"])
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__dict__" in value:
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in value["__dict__"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        raise TypeError("a list cannot be a dict key")
    return key
