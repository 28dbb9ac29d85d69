"""Functions the gloo test harness runs on every rank (importable by name from the forkserver)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def train_cli(args: list[str]) -> dict[str, Any]:
    """Run `scaling train ARGS` as one rank of the harness's job; rank 0 returns the metrics it logged."""
    import os

    from scaling.cli.train import train

    code = 0
    try:
        train.main(args, prog_name="scaling train", standalone_mode=False)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    output = Path(args[args.index("--output") + 1])
    records = []
    if os.environ.get("RANK") == "0" and (output / "metrics.jsonl").is_file():
        records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {"exit": code, "records": records}


def train_and_logits(args: list[str], input_ids: list[list[int]]) -> list[list[list[float]]] | None:
    """Train through the engine, then return the engine's logits for `input_ids` (rank 0)."""
    import torch

    from scaling.cli.train import train as command
    from scaling.cli.train_options import run_request_from_options
    from scaling.distributed import LaunchEnv
    from scaling.engine import dist as dist_setup
    from scaling.engine.prepare import materialize
    from scaling.engine.trainer import TrainingRun

    ctx = command.make_context("scaling train", list(args))
    env = LaunchEnv.from_environ()
    request = run_request_from_options(ctx.params, world_size=env.world_size, explicit=frozenset(ctx.params))
    dist_setup.init_process_group(env, timeout_s=120)
    if env.rank == 0:
        materialize(request)
    dist_setup.barrier()
    from scaling.config.run import RunConfig

    run = RunConfig.load(Path(request.checkpoint.output) / "run_config.json")
    try:
        training = TrainingRun(run, env)
        training.fit()
        training.engine.eval()
        with torch.no_grad():
            logits = training.engine(input_ids=torch.tensor(input_ids)).logits.float()
    finally:
        dist_setup.teardown()
    return logits.tolist() if env.rank == 0 else None
