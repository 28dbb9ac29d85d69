"""DeepSpeed internals: engine config and consolidation, TP/SP group setup, ZeRO-3 partition merging,
config validation without a launched world, and the shared-memory comm op build on CPU."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def skip_shm_comm_build() -> None:
    """Stop DeepSpeed from JIT-compiling its shared-memory all-reduce op on CPU (~30 s on 2 cores per
    init, after which it falls back to gloo anyway) by replacing `deepspeed.comm.torch.build_shm_op`.

    The attribute must be patched on the module object in sys.modules: `import deepspeed.comm.torch as m`
    binds the `torch` package (deepspeed.comm re-exports a name `torch`), not the submodule.
    """
    import deepspeed.comm.torch  # noqa: F401

    module = sys.modules["deepspeed.comm.torch"]
    if not hasattr(module, "build_shm_op"):
        raise AttributeError("deepspeed.comm.torch.build_shm_op is gone: update scaling.compat.deepspeed")
    setattr(module, "build_shm_op", lambda: None)  # noqa: B010 -- the attribute is not in DeepSpeed's stubs


@contextmanager
def universal_checkpoint_loading(engine: Any, enabled: bool) -> Iterator[None]:
    """Within the block, `engine.load_checkpoint` reads DeepSpeed's universal format when `enabled`.

    The switch lives on the engine's private config (`engine._config.load_universal_checkpoint`) and is
    read at load time; DeepSpeed has no per-call argument for it. The previous value is restored.
    """
    config = engine._config
    saved = config.load_universal_checkpoint
    config.load_universal_checkpoint = enabled or saved
    try:
        yield
    finally:
        config.load_universal_checkpoint = saved


def consolidated_16bit_state_dict(engine: Any) -> dict[str, Any] | None:
    """Full (unpartitioned) weights of a ZeRO-3 or AutoTP engine; collective, only rank 0 gets the dict
    (the other ranks get None or an empty dict). `save_16bit_model`, the public API, only writes a file."""
    return engine._consolidated_16bit_state_dict()


def init_tensor_parallel_groups(tensor_parallel: int) -> Any:
    """Create DeepSpeed's (data, tensor) process-group mesh for AutoTP and return `deepspeed.utils.groups`,
    which DeepSpeed then accepts as the mpu. A no-op when the mesh already exists."""
    from deepspeed.utils import groups

    groups._init_tp_mesh_device(tensor_model_parallel_size=tensor_parallel)
    return groups


def validate_config(config: dict[str, Any], *, world_size: int) -> None:
    """Run DeepSpeed's own config validation (`DeepSpeedConfig`) as rank 0 of `world_size` ranks, without a
    process group: `deepspeed.comm`'s rank and world size are patched for the duration. With no mpu DeepSpeed
    checks the batch against that world size (divided by `sequence_parallel_size` when set), so pass the
    data-parallel size, or data-parallel x sequence-parallel for Ulysses configs.
    Raises whatever DeepSpeed raises (AssertionError, pydantic's ValidationError, ValueError, ...)."""
    from unittest import mock

    import deepspeed.comm
    from deepspeed.runtime.config import DeepSpeedConfig

    with (
        mock.patch.object(deepspeed.comm, "get_rank", return_value=0),
        mock.patch.object(deepspeed.comm, "get_world_size", return_value=world_size),
    ):
        DeepSpeedConfig(config)


@dataclass(frozen=True)
class Zero3Checkpoint:
    """A ZeRO-3 checkpoint directory as DeepSpeed's `zero_to_fp32` script reads it."""

    model_files: list[str]
    """Per-rank model-states files."""
    optim_files: list[str]
    """Per-rank optimizer-states files (one per data-parallel rank)."""
    model_states: list[Any]
    """zero_to_fp32's parsed model states (parameter shapes, shared parameters, buffers) per rank."""

    @classmethod
    def read(cls, directory: Path) -> Zero3Checkpoint:
        from deepspeed.utils import zero_to_fp32 as z2f

        model_files = z2f.get_model_state_files(str(directory))
        return cls(model_files, z2f.get_optim_files(str(directory)), z2f.parse_model_states(model_files))

    @property
    def shared_params(self) -> list[tuple[str, str]]:
        """(tied name, source name) pairs: parameters stored once and shared."""
        return [(tied, source) for tied, source in self.model_states[0].shared_params]

    def merge(self, flat_per_rank: list[list[Any]]) -> dict[str, Any]:
        """Whole parameters from per-rank lists of flat fp32 partitions (one flat tensor per sub-group), laid
        out like the checkpoint's `fp32_flat_groups` (Adam moments flattened the same way also merge)."""
        from deepspeed.utils import zero_to_fp32 as z2f

        merged: dict[str, Any] = {}
        z2f._zero3_merge_trainable_params(merged, len(flat_per_rank), flat_per_rank, self.model_states)
        return {k: v.contiguous().clone() for k, v in z2f.to_torch_tensor(merged).items()}


def any_batch_ulysses(**kwargs: Any) -> Any:
    """DeepSpeed's `UlyssesSPAttentionHF(**kwargs)`, accepting micro-batches with fewer rows than the
    `batch_size` it was built for (the last batch of a source may be shorter).

    DeepSpeed fixes the rows at construction in internal attributes (`batch_size`, `required_*_shape`);
    the subclass rewrites them when the rows change.
    """
    import torch
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    class AnyBatchUlysses(UlyssesSPAttentionHF):
        batch_size: int  # set by DeepSpeed's __init__, rewritten here

        def forward(self, module: Any, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            rows = query.shape[0]
            if rows != self.batch_size:
                self.batch_size = rows
                heads, kv_heads, size = self.attn_head_count, self.global_kv_head_count, self.attn_head_size
                self.required_query_shape = torch.Size([1, rows, heads, size])
                self.required_key_value_shape = torch.Size([1, rows, kv_heads, size])
                self.required_context_shape = torch.Size([1, rows, size * heads // self.world_size])
            return super().forward(module, query, *args, **kwargs)

    return AnyBatchUlysses(**kwargs)


def sequence_parallel_state(sp_size: int) -> Any:
    """Create DeepSpeed-Ulysses' sequence and sequence-data-parallel groups and return the module holding
    them (`deepspeed.runtime.sequence_parallel.parallel_state_sp`), which DeepSpeed takes as its mpu. The
    module is not part of DeepSpeed's documented API."""
    import deepspeed.runtime.sequence_parallel.parallel_state_sp as state

    state.initialize_sequence_parallel(sequence_parallel_size=sp_size)
    return state


def count_every_pipeline_param_in_clip_norm(module: Any, rank: int) -> None:
    """Make DeepSpeed's fp32 (ZeRO-0) pipeline clip with the true global norm.

    DeepSpeed's `clip_grad_norm_` counts a parameter only when its (undocumented) `model_parallel` attribute
    is set or it lives on model-parallel rank 0, which in a pipeline is stage 0: the other stages' gradients
    were left out of the norm. Mark every parameter model-parallel, except the tied embedding on all but one
    of the stages that hold it (`PipelineModule.tied_comms`/`tied_modules`), so that it is counted once.
    """
    for param in module.parameters():
        param.model_parallel = True
    for key, comm in module.tied_comms.items():
        if rank != min(comm["ranks"]):
            for param in module.tied_modules[key].parameters():
                param.model_parallel = False


def local_partition(param: Any) -> Any:
    """The part of a parameter this rank holds, detached: under ZeRO-3 its partition (`ds_tensor`; the
    parameter itself is an empty placeholder outside a gather), else the parameter."""
    partition = getattr(param, "ds_tensor", None)
    return (partition if partition is not None else param).detach()
