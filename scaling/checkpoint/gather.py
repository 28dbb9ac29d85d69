"""One whole checkpoint on rank 0, gathered over the process group from checkpoints kept per node.

With node-local storage every node's `checkpoints/step-N/` holds only its ranks' shards (ZeRO optimizer
partitions, pipeline layers) plus the files every node writes alike (model states, `scaling/model/`). The
final export needs them all in one place: rank 0 receives what its node lacks into a staging copy of the step
(its own files hard-linked, the others' streamed in chunks), commits the copy with its own manifest and
exports from it. The per-node checkpoints stay as they were (each resumes its node). Offline, the same union
is what `rsync` of every node's step directory into one gives (`scaling export` reads it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO, Any

from scaling.checkpoint.store import MANIFEST, CheckpointRef, write_manifest

CHUNK = 64 << 20
"""Bytes per message: a shard of many GB never sits in memory whole."""
STAGING = ".gathered"
"""Under the checkpoints root: not a `step-N` name, so never taken for a checkpoint of the run."""


def _listing(step_dir: Path) -> dict[str, int]:
    return {
        p.relative_to(step_dir).as_posix(): p.stat().st_size
        for p in sorted(step_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def gather_to_rank0(ref: CheckpointRef, rank: int) -> CheckpointRef | None:
    """Collective: on rank 0, a complete copy of `ref` (committed, under checkpoints/.gathered/); None elsewhere.
    Remove it with `discard_gathered` once used."""
    import torch
    import torch.distributed as dist

    world = dist.get_world_size()
    listings: list[Any] = [None] * world
    dist.all_gather_object(listings, _listing(ref.path))
    plan: list[Any] = [None]
    if rank == 0:
        have = set(listings[0])
        wanted: dict[str, int] = {}
        for owner, listing in enumerate(listings):
            for rel in listing:
                if rel not in have and rel not in wanted:
                    wanted[rel] = owner
        plan[0] = sorted(wanted.items())
    dist.broadcast_object_list(plan, src=0)
    staged = CheckpointRef(ref.root / STAGING, ref.tag)
    if rank == 0:
        shutil.rmtree(staged.root, ignore_errors=True)
        for rel in listings[0]:
            target = staged.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(ref.path / rel, target)
            except OSError:  # another filesystem, or no hard links: copy
                shutil.copy2(ref.path / rel, target)
    for rel, owner in plan[0]:
        if rank == owner:
            _send(ref.path / rel, listings[owner][rel])
        elif rank == 0:
            _receive(staged.path / rel, listings[owner][rel], owner, torch)
    if rank != 0:
        return None
    write_manifest(staged.path, step=ref.step)
    return staged


def _send(path: Path, size: int) -> None:
    import torch
    import torch.distributed as dist

    with open(path, "rb") as handle:
        left = size
        while left:
            block = handle.read(min(CHUNK, left))
            dist.send(torch.frombuffer(bytearray(block), dtype=torch.uint8), dst=0)
            left -= len(block)


def _receive(path: Path, size: int, owner: int, torch: Any) -> None:
    import torch.distributed as dist

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        left = size
        while left:
            block = torch.empty(min(CHUNK, left), dtype=torch.uint8)
            dist.recv(block, src=owner)
            handle.write(block.numpy().tobytes())
            left -= block.numel()


def discard_gathered(staged: CheckpointRef | None) -> None:
    if staged is not None:
        shutil.rmtree(staged.root, ignore_errors=True)


def broadcast_tree(sources: dict[str, Path] | None, dest: Path, rank: int, *, write: bool) -> None:
    """Collective: rank 0's files (`sources`: relative name -> its path; None elsewhere) reach `dest/NAME` on
    every rank with `write` (one writer per directory; the others receive and discard), in chunks."""
    import torch
    import torch.distributed as dist

    listing: list[Any] = [
        [(rel, path.stat().st_size) for rel, path in sorted(sources.items())] if sources is not None else None
    ]
    dist.broadcast_object_list(listing, src=0)
    for rel, size in listing[0]:
        handle: IO[bytes] | None = None
        if rank == 0:
            assert sources is not None
            handle = open(sources[rel], "rb")  # noqa: SIM115 (closed below, after the chunks)
        elif write:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            handle = open(dest / rel, "wb")  # noqa: SIM115
        try:
            left = size
            while left:
                count = min(CHUNK, left)
                if rank == 0:
                    assert handle is not None
                    block = torch.frombuffer(bytearray(handle.read(count)), dtype=torch.uint8)
                else:
                    block = torch.empty(count, dtype=torch.uint8)
                dist.broadcast(block, src=0)
                if rank != 0 and handle is not None:
                    handle.write(block.numpy().tobytes())
                left -= count
        finally:
            if handle is not None:
                handle.close()
