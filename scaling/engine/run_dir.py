"""Which ranks share the run directory, checked before training, and what a node needs when it has its own.

On a cluster the run directory (`--output`) is either one path every node mounts, or each node's local disk
(each node started with its own `--output`, or the same path on a local filesystem). A run that assumes one
and gets the other fails late and badly: rank 0 commits checkpoints whose other shards lie on other disks, a
node misses the tokenizer that only the launching host prepared, and a rank that dies leaves its peers
waiting in a barrier. So every multi-node run checks at start, in seconds: each rank writes a probe file named
with a fresh nonce into its own run directory, and all ranks exchange which probes they see.

- shared storage (the default): every rank must see every probe; otherwise exit 2 naming the ranks and the
  two ways out (a shared `--output`, or node-local checkpoints);
- node-local storage (DeepSpeed's `checkpoint.use_node_local_storage`, the one switch): the ranks of each node
  must see exactly their node's probes (local rank 0 of each node writes the node's shared checkpoint files,
  as DeepSpeed does for its model states). Each node's run directory then receives rank 0's tokenizer, and the
  run config a node's ranks train from names the node's own directory.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.checkpoint.store import CheckpointRef
from scaling.config.run import RUN_CONFIG_FILE
from scaling.distributed.env import LaunchEnv
from scaling.errors import CheckpointError, UserError

log = logging.getLogger(__name__)

PROBE_PREFIX = ".probe-"
PROBE_WAIT_S = 10.0
"""How long a rank waits for the probes it expects: NFS caches directory listings for a few seconds."""
NODE_LOCAL_KEY = "checkpoint.use_node_local_storage"
SHARED_HINT = (
    "put --output on a filesystem every node mounts, or keep each node's checkpoints on its own disk with "
    f"--set {NODE_LOCAL_KEY}=true"
)


def node_local_storage(deepspeed: Mapping[str, Any]) -> bool:
    """Whether the run keeps its checkpoints on each node's own disk (DeepSpeed's switch, read nowhere else)."""
    return bool(deepspeed.get("checkpoint", {}).get("use_node_local_storage", False))


@dataclass(frozen=True)
class Sighting:
    """What one rank saw of the probes: its place, and the ranks whose probe is in its run directory."""

    rank: int
    local_rank: int
    directory: str
    seen: frozenset[int]


def storage_problem(sightings: list[Sighting], *, node_local: bool) -> str | None:
    """Why the ranks' views of the run directory do not fit the storage mode; None when they do."""
    world = frozenset(s.rank for s in sightings)
    by_rank = {s.rank: s for s in sightings}
    if not node_local:
        blind = [s for s in sightings if s.seen != world]
        if not blind:
            return None
        lines = [
            f"rank {s.rank} sees the probe files of rank(s) {_ranks(s.seen)} of {len(world)} in {s.directory}"
            for s in blind[:8]
        ]
        return (
            "the run directory is not shared by all nodes (each rank wrote a probe file into its --output):\n  "
            + "\n  ".join(lines)
            + f"\n{SHARED_HINT}"
        )
    problems = []
    if all(s.seen == world for s in sightings):
        return (
            f"{NODE_LOCAL_KEY} is set, but every node sees the same run directory "
            f"({sightings[0].directory}): the nodes would overwrite each other's checkpoint files; drop the "
            "setting (shared storage), or give each node its own --output"
        )
    for s in sightings:
        group = [by_rank[r] for r in s.seen if r in by_rank]
        if s.rank not in s.seen:
            problems.append(f"rank {s.rank} does not see its own probe file in {s.directory}")
        elif any(other.seen != s.seen for other in group):
            problems.append(f"rank {s.rank} sees rank(s) {_ranks(s.seen)}, which do not all see the same")
        elif sum(other.local_rank == 0 for other in group) != 1:
            problems.append(
                f"the ranks sharing {s.directory} ({_ranks(s.seen)}) are not one node's ranks "
                "(each node's local rank 0 writes its node's checkpoint files)"
            )
    if not problems:
        return None
    return f"{NODE_LOCAL_KEY}: the run directories do not form one per node:\n  " + "\n  ".join(
        sorted(set(problems))[:8]
    )


def _ranks(ranks: frozenset[int]) -> str:
    return ", ".join(map(str, sorted(ranks))) or "none"


def check_storage(directory: Path, env: LaunchEnv, *, node_local: bool) -> None:
    """Collective: raise the same UserError on every rank when the run directories do not fit the mode."""
    import torch.distributed as dist

    nonce = [secrets.token_hex(8) if env.rank == 0 else None]
    dist.broadcast_object_list(nonce, src=0)
    prefix = f"{PROBE_PREFIX}{nonce[0]}-rank"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f"{prefix}{env.rank:05d}"
        probe.write_text(f"{env.rank}\n", encoding="utf-8")
    except OSError as err:
        probe = None
        failure = f"rank {env.rank} cannot write into its run directory {directory}: {err}"
    else:
        failure = ""
    dist.barrier()
    expected = env.local_world_size if node_local else env.world_size
    seen = _probes(directory, prefix)
    deadline = time.monotonic() + PROBE_WAIT_S
    while len(seen) < expected and time.monotonic() < deadline and not failure:
        time.sleep(0.2)
        seen = _probes(directory, prefix)
    mine = (Sighting(env.rank, env.local_rank, str(directory), frozenset(seen)), failure)
    everyone: list[Any] = [None] * env.world_size
    dist.all_gather_object(everyone, mine)
    dist.barrier()  # every rank has looked before any probe goes away
    if probe is not None:
        probe.unlink(missing_ok=True)
    failures = [f for _, f in everyone if f]
    if failures:
        raise UserError("\n".join(failures))
    problem = storage_problem([s for s, _ in everyone], node_local=node_local)
    if problem:
        raise UserError(problem)


def _probes(directory: Path, prefix: str) -> set[int]:
    try:
        names = [p.name for p in directory.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return set()
    return {int(name[len(prefix) :]) for name in names if name[len(prefix) :].isdigit()}


def adopt_run_dir(texts: Mapping[str, str], directory: Path, env: LaunchEnv) -> dict[str, str]:
    """Collective, for a job on more than one node: check the storage mode against what the ranks see, and
    under node-local storage give this node what the resolved files name inside rank 0's run directory (the
    tokenizer; a distillation's student and teacher) and resolved files that name this node's own directory
    instead. Returns the resolved files to train from."""
    import torch.distributed as dist

    from scaling.checkpoint.gather import broadcast_tree

    if env.world_size == env.local_world_size:  # one node: one run directory
        return dict(texts)
    data = {name: json.loads(text) for name, text in texts.items()}
    node_local = node_local_storage(data[RUN_CONFIG_FILE]["deepspeed"])
    check_storage(directory, env, node_local=node_local)
    if not node_local:
        return dict(texts)
    origin = str(data[RUN_CONFIG_FILE]["checkpoint"]["output"])
    sources = None
    if env.rank == 0:
        # Not checkpoints (`--resume PATH` inside the run): each node resumes from its own.
        skip = str(Path(origin) / "checkpoints")
        named = {
            Path(s)
            for s in _strings(data)
            if _inside(s, origin) and s != origin and not _inside(s, skip) and Path(s).exists()
        }
        sources = {
            file.relative_to(origin).as_posix(): file
            for path in sorted(named)
            for file in ([path] if path.is_file() else sorted(path.rglob("*")))
            if file.is_file()
        }
    broadcast_tree(sources, directory, env.rank, write=env.local_rank == 0 and env.rank != 0)
    dist.barrier()  # the node's copy is written before any of its ranks reads it
    here = str(directory)
    moved = _replace_strings(data, lambda s: here + s[len(origin) :] if _inside(s, origin) else s)
    return {name: json.dumps(value, indent=2) + "\n" for name, value in moved.items()}


def _inside(text: str, origin: str) -> bool:
    return text == origin or text.startswith(origin.rstrip("/") + "/")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _replace_strings(value: Any, change: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {key: _replace_strings(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_strings(item, change) for item in value]
    return value


def agree_on_resume(
    find: Callable[[], CheckpointRef | None], root: Path, env: LaunchEnv, *, writer: bool = False
) -> CheckpointRef | None:
    """Collective: the checkpoint every rank resumes from (`find` is this rank's own answer).

    With one shared run directory all ranks find the same one. With one per node they can differ: a job
    killed between the nodes' commits leaves one node a checkpoint behind, and resuming each node from its
    own `latest` would mix two steps. Then the newest step committed on every node wins, and a node ahead
    (its `writer`) points its `latest` back at it: the step it is ahead by is saved again. A rank that cannot
    resume (no checkpoint where the others have one, a bad path) fails every rank at once, not in a hang."""
    import torch.distributed as dist

    from scaling.checkpoint.store import committed, publish_latest, tag_for

    try:
        ref, error = find(), ""
    except CheckpointError as err:
        ref, error = None, str(err)
    if not dist.is_initialized() or env.world_size == 1:
        if error:
            raise CheckpointError(error)
        return ref
    steps = [r.step for r in committed(ref.root if ref else root)]
    mine = (env.rank, ref.step if ref else None, error, steps)
    everyone: list[Any] = [None] * env.world_size
    dist.all_gather_object(everyone, mine)
    errors = [(rank, message) for rank, _, message, _ in everyone if message]
    if errors:
        rank, message = errors[0]
        raise CheckpointError(f"{message} (rank {rank})" if rank != env.rank else message)
    found = {step for _, step, _, _ in everyone}
    if len(found) == 1:
        return ref
    if None in found:
        missing = [rank for rank, step, _, _ in everyone if step is None]
        raise CheckpointError(
            f"rank(s) {', '.join(map(str, missing))} found no checkpoint in their run directory while others "
            f"found step(s) {', '.join(str(s) for s in sorted(s for s in found if s is not None))}: every node "
            "must hold its share of the checkpoint (copy the missing node's checkpoints back, or start fresh "
            "in a new --output)"
        )
    newest = min(s for s in found if s is not None)
    common = set.intersection(*(set(steps) for _, _, _, steps in everyone))
    usable = [s for s in common if s <= newest]
    if not usable:
        raise CheckpointError(
            f"no checkpoint step is committed on every node (latest steps: {sorted(found)})"
        )
    chosen = max(usable)
    agreed = CheckpointRef(ref.root if ref else root, tag_for(chosen))
    if writer and ref is not None and ref.step != chosen and ref.root == root:
        publish_latest(agreed)
    log.warning(
        "the nodes' latest checkpoints differ (steps %s): resuming from step %d, the newest committed on every node",
        ", ".join(map(str, sorted(found))),
        chosen,
    )
    return agreed
