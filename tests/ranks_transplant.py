"""A rank function for the transplant tests (importable by name from the harness's forkserver)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def transplanted_embeddings(args: list[str]) -> dict[str, Any] | None:
    """Prepare `scaling train ARGS`, build the run's model on every rank (ZeRO-3 partitions it as it is
    built) and return its whole input and output embeddings on rank 0 (lists: a tensor sent through the
    harness's queue would point at the exited rank's shared memory)."""
    import deepspeed

    from scaling.cli.train import train as command
    from scaling.cli.train_options import run_request_from_options
    from scaling.config.run import RunConfig
    from scaling.distributed import LaunchEnv
    from scaling.engine import dist as dist_setup
    from scaling.engine.build import load_run_tokenizer, make_model
    from scaling.engine.prepare import materialize

    ctx = command.make_context("scaling train", list(args))
    env = LaunchEnv.from_environ()
    request = run_request_from_options(ctx.params, world_size=env.world_size, explicit=frozenset(ctx.params))
    dist_setup.init_process_group(env, timeout_s=120)
    try:
        if env.rank == 0:
            materialize(request)
        dist_setup.barrier()
        run = RunConfig.load(Path(request.checkpoint.output) / "run_config.json")
        model = make_model(run, load_run_tokenizer(run, env.rank))
        weights = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
        with deepspeed.zero.GatheredParameters(weights):
            full = {name: w.detach().tolist() for name, w in zip(("input", "output"), weights, strict=True)}
        # The blocks are partitioned as built; transformers makes resized embeddings whole, for
        # deepspeed.initialize to partition.
        partitioned = any(hasattr(p, "ds_id") for p in model.parameters())
    finally:
        dist_setup.teardown()
    return {**full, "partitioned": partitioned} if env.rank == 0 else None
