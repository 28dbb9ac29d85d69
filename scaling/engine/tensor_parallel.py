"""Tensor-parallel layout through DeepSpeed AutoTP (`"tensor_parallel": {"autotp_size": T}`).

AutoTP shards the linear layers of the HF model across T consecutive ranks when `deepspeed.initialize` runs.
We create the (data, tensor) process-group mesh ourselves and hand DeepSpeed its `groups` module as the mpu:
without an mpu, DeepSpeed checks the batch size against the whole world instead of the data-parallel size.
Tensor-parallel peers share a data-parallel rank, so they read identical batches (DeepSpeed also checks
that on the first forward). The sharded model's outputs (logits, hidden states) are whole on every peer, so
any whole-sequence objective runs unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaling.checkpoint.export import TP_CONSOLIDATED as CONSOLIDATED
from scaling.engine.layout import Layout

if TYPE_CHECKING:
    from scaling.checkpoint.store import CheckpointRef
    from scaling.engine.objective import Objective

__all__ = ["TensorParallelLayout", "save_consolidated"]


class TensorParallelLayout(Layout):
    """The model is sharded by AutoTP over `run.parallel.tensor_parallel` ranks."""

    name = "tensor-parallel"

    def build_engine(self, objective: Objective, tokenizer: Any) -> tuple[Any, Any]:
        from scaling.compat.deepspeed import init_tensor_parallel_groups

        run = self.run
        config = dict(run.deepspeed)
        config["tensor_parallel"] = {
            **config.get("tensor_parallel", {}),
            "autotp_size": run.parallel.tensor_parallel,
        }
        groups = init_tensor_parallel_groups(run.parallel.tensor_parallel)
        model = objective.build_model(run, tokenizer)
        self.engine = self.initialize_engine(model, config=config, mpu=groups)
        return self.engine, model.config

    def before_commit(self, ref: CheckpointRef) -> None:
        save_consolidated(self.engine, ref.ours / CONSOLIDATED, rank=self.rank)


def save_consolidated(engine: Any, path: Path, *, rank: int) -> None:
    """Gather the tensor-parallel shards into full weights (collective: all ranks; rank 0 writes the file).

    Export reads this file: DeepSpeed's own files hold one shard per tensor rank, which zero_to_fp32 cannot
    merge. The weights are the module's (fp32 runs: exactly the trained weights; bf16 runs: bf16 values).
    """
    import os

    import torch

    from scaling.compat.deepspeed import consolidated_16bit_state_dict

    state = consolidated_16bit_state_dict(engine)
    if rank == 0 and state is not None:
        tmp = path.with_name(path.name + ".tmp")
        torch.save({k: v.detach().clone().float() for k, v in state.items()}, tmp)
        os.replace(tmp, path)
