"""Functions the gloo test harness runs on every rank (importable by name from the forkserver)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def train_cli(args: list[str]) -> dict[str, Any]:
    """Run `scaling train ARGS` as one rank of the harness's job; rank 0 returns the metrics it logged."""
    import os

    import click

    from scaling.cli.train import train
    from scaling.errors import UserError

    code, message = 0, ""
    try:
        train.main(args, prog_name="scaling train", standalone_mode=False)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except click.ClickException as err:
        code, message = err.exit_code, err.format_message()
    except UserError as err:  # what the scaling group shows as `Error: ...`, exit 2
        code, message = 2, str(err)
    output = Path(args[args.index("--output") + 1])
    records = []
    if os.environ.get("RANK") == "0" and (output / "metrics.jsonl").is_file():
        records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {"exit": code, "message": message, "records": records}


def train_and_logits(args: list[str], input_ids: list[list[int]]) -> list[list[list[float]]] | None:
    """Train through the engine, then return the engine's logits for `input_ids` (rank 0)."""
    import torch

    from scaling.cli.train import train as command
    from scaling.cli.train_options import run_request_from_options
    from scaling.distributed import LaunchEnv
    from scaling.engine import dist as dist_setup
    from scaling.engine.prepare import materialize
    from scaling.engine.trainer import Trainer

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
        training = Trainer(run, env)
        training.fit()
        training.engine.eval()
        with torch.no_grad():
            logits = training.engine(input_ids=torch.tensor(input_ids)).logits.float()
    finally:
        dist_setup.teardown()
    return logits.tolist() if env.rank == 0 else None


def train_cli_with_nan(args: list[str], bad_rank: int, bad_calls: list[int]) -> dict[str, Any]:
    """`train_cli`, but the loss of the given micro-batch calls (0-based, counted per rank) on `bad_rank`
    is NaN: what a corrupt sample or an overflow looks like to the loop."""
    import os

    from scaling.engine.objective import LanguageModelling

    original = LanguageModelling.loss
    calls = {"n": 0}

    def poisoned(self: LanguageModelling, model: Any, batch: dict) -> Any:
        loss = original(self, model, batch)
        index = calls["n"]
        calls["n"] += 1
        if int(os.environ["RANK"]) == bad_rank and index in bad_calls:
            return loss * float("nan")
        return loss

    LanguageModelling.loss = poisoned
    try:
        return train_cli(args)
    finally:
        LanguageModelling.loss = original
