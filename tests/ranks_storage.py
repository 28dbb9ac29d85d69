"""Rank functions for the run-directory checks (importable by name from the harness's forkserver)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def storage_cases(base: str) -> dict[str, Any]:
    """Each rank plays one node (local rank 0 of a node of one): the checks' outcome per case on this rank."""
    import os

    import torch.distributed as dist

    from scaling.checkpoint.store import (
        CheckpointRef,
        publish_latest,
        resolve_resume,
        tag_for,
        write_manifest,
    )
    from scaling.distributed.env import LaunchEnv
    from scaling.engine.run_dir import agree_on_resume, check_storage
    from scaling.errors import UserError

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    env = LaunchEnv(rank=rank, local_rank=0, world_size=2, local_world_size=1, launched=True)
    own, shared = Path(base) / f"node{rank}", Path(base) / "shared"
    out: dict[str, Any] = {}

    def outcome(directory: Path, node_local: bool) -> str:
        try:
            check_storage(directory, env, node_local=node_local)
        except UserError as err:
            return str(err)
        return "ok"

    out["own_dirs_assumed_shared"] = outcome(own, False)
    out["own_dirs_node_local"] = outcome(own, True)
    out["shared_dir_shared"] = outcome(shared, False)
    out["shared_dir_node_local"] = outcome(shared, True)
    out["probes_left"] = sorted(p.name for p in own.iterdir())

    root = own / "checkpoints"
    for step in (3, 6) if rank == 0 else (3,):  # node 1 died between the nodes' commits of step 6
        ref = CheckpointRef(root, tag_for(step))
        (ref.ours).mkdir(parents=True)
        (ref.ours / f"rank{rank:05d}.pt").write_bytes(b"state")
        write_manifest(ref.path, step=step)
        publish_latest(ref)
    found = agree_on_resume(lambda: resolve_resume("auto", root), root, env, writer=True)
    out["resume_step"] = found.step if found else None
    out["latest_after"] = (root / "latest").read_text().strip()
    empty = own / "empty"
    try:
        agree_on_resume(lambda: resolve_resume("auto", root if rank == 0 else empty), root, env)
        out["one_node_without"] = "ok"
    except UserError as err:
        out["one_node_without"] = str(err)
    dist.destroy_process_group()
    return out


def adopt_case(base: str) -> dict[str, Any]:
    """Node-local storage, each rank one node: what rank 1's node receives from rank 0's run directory."""
    import json
    import os

    import torch.distributed as dist

    from scaling.checkpoint import gather
    from scaling.distributed.env import LaunchEnv
    from scaling.engine.run_dir import adopt_run_dir

    gather.CHUNK = 7  # many chunks per file
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    env = LaunchEnv(rank=rank, local_rank=0, world_size=2, local_world_size=1, launched=True)
    origin, own = Path(base) / "node0", Path(base) / f"node{rank}"
    if rank == 0:
        (origin / "tokenizer").mkdir(parents=True)
        (origin / "tokenizer" / "tokenizer.json").write_text('{"vocab": "' + "x" * 50 + '"}')
        (origin / "student").mkdir()
        (origin / "student" / "model.safetensors").write_bytes(bytes(range(256)) * 3)
        (origin / "checkpoints" / "step-00000001").mkdir(parents=True)
        (origin / "checkpoints" / "step-00000001" / "big.pt").write_bytes(b"never shipped")
    run = {
        "deepspeed": {"checkpoint": {"use_node_local_storage": True}},
        "checkpoint": {"output": str(origin), "resume": f"{origin}/checkpoints/step-00000001"},
        "model": {"tokenizer": f"{origin}/tokenizer", "source": f"{origin}/student"},
        "data": {"train": [f"{base}/corpus.txt"]},
    }
    texts = {
        "run_config.json": json.dumps(run),
        "distill_config.json": json.dumps({"student_dir": f"{origin}/student"}),
    }
    adopted = {name: json.loads(text) for name, text in adopt_run_dir(texts, own, env).items()}
    files = sorted(p.relative_to(own).as_posix() for p in own.rglob("*") if p.is_file())
    same = rank == 0 or all((own / f).read_bytes() == (origin / f).read_bytes() for f in files)
    dist.destroy_process_group()
    return {"config": adopted, "files": files, "same": same}
