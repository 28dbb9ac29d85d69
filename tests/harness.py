"""The distributed tests' harness: run a function on N local gloo ranks from one Python process (the way
DeepSpeed's own unit tests spawn ranks), without the deepspeed launcher. The benchmarks use it as `tests.harness`.

Ranks fork from a forkserver that has torch, deepspeed and transformers imported once, so starting a rank
costs about a second instead of five. Each rank gets the variables a launcher would set and one thread.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

PRELOAD = ("torch", "deepspeed", "transformers", "scaling.engine.trainer")
_CONTEXTS: dict[tuple[str, ...], Any] = {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _context(preload: Sequence[str]) -> Any:
    key = tuple(preload)
    if key not in _CONTEXTS:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(key))
        _CONTEXTS[key] = ctx
    return _CONTEXTS[key]


def _entry(
    fn: Callable[..., Any], rank: int, world: int, port: int, args: tuple, path: list[str], queue: Any
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    for entry in reversed(path):  # so `fn` can be found by module name, as in the parent
        if entry not in sys.path:
            sys.path.insert(0, entry)
    import torch

    torch.set_num_threads(1)  # ranks share the node's cores; one thread each avoids oversubscription
    try:
        queue.put((rank, "ok", fn(*args)))
    except BaseException:  # report everything, SystemExit included, to the caller
        queue.put((rank, "error", traceback.format_exc()))


def run_ranks(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 300.0,
    preload: Sequence[str] = PRELOAD,
) -> list[Any]:
    """Call fn(*args) on `world_size` ranks; return each rank's result (by rank), or raise the first error.

    `fn` must be importable by module name (defined at module level, not in __main__ of a script)."""
    ctx = _context(preload)
    queue = ctx.Queue()
    port = free_port()
    path = list(sys.path)
    procs = [
        ctx.Process(target=_entry, args=(fn, r, world_size, port, args, path, queue))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    try:
        for _ in range(world_size):
            rank, status, payload = queue.get(timeout=timeout)
            if status == "ok":
                results[rank] = payload
            else:
                errors.append(f"rank {rank} failed:\n{payload}")
                break
    except Exception as exc:  # queue.Empty on timeout
        errors.append(f"ranks did not finish within {timeout} s ({type(exc).__name__})")
    finally:
        for p in procs:
            p.join(timeout=60 if not errors else 5)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[r] for r in range(world_size)]
