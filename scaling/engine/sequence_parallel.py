"""Sequence-parallel layout (DeepSpeed-Ulysses) for Hugging Face causal LMs.

S consecutive ranks share every sample: each holds 1/S of the sequence through the whole model. Around each
attention call, DeepSpeed's `UlyssesSPAttentionHF` trades sequence shards for head shards with one all-to-all
(each rank then attends over the full sequence for H/S heads) and trades back afterwards. Everything else
(embeddings, MLPs, norms, the LM head and the loss) is token-local, so activation memory per rank falls by S.

What we add around DeepSpeed's pieces:
- Our own attention key (`scaling_ulysses`) instead of DeepSpeed's process-wide takeover of "sdpa", so other
  models in the process (export, evaluation) keep plain attention. Under that key transformers builds no
  attention mask (the wrapper would discard it anyway); the core attention rebuilds what is needed from the
  gathered position ids: plain causal attention, or block-diagonal causal attention when positions restart
  inside a row (packed documents without cross-document attention).
- Sharding inside the run: the peers of a sequence-parallel group read the same micro-batch (they share a
  data-parallel rank) and each keeps its slice, after the labels are shifted on the whole sequence (the shift
  crosses shard boundaries).
- The loss: each rank's value is the group's token-weighted mean, while its gradient flows only through its
  own tokens (scaling.engine.shards). The objective computes it on this rank's `SequenceShard`.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from scaling.engine.layout import Layout
from scaling.engine.shards import (
    IGNORE,
    SequenceShard,
    gradient_factor,
    group_mean_loss,
    shard_batch,
    token_loss_sum,
)

if TYPE_CHECKING:
    from scaling.engine.objective import EvalTotals, Objective

ATTENTION_KEY = "scaling_ulysses"

__all__ = [
    "ATTENTION_KEY",
    "IGNORE",
    "SequenceParallelLayout",
    "SequenceParallelUnit",
    "gradient_factor",
    "group_mean_loss",
    "install_ulysses",
    "shard_batch",
    "token_loss_sum",
]


def _block_causal_mask(positions: torch.Tensor) -> torch.Tensor | None:
    """None when every row is one sequence (positions count up by one); else a [rows, 1, s, s] boolean mask
    that lets each token see earlier tokens of its own document only."""
    restarts = positions[:, 1:] != positions[:, :-1] + 1
    if not bool(restarts.any()):
        return None
    documents = torch.nn.functional.pad(restarts.cumsum(dim=1), (1, 0))
    same_document = documents[:, :, None] == documents[:, None, :]
    width = positions.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=positions.device).tril()
    return (same_document & causal)[:, None]


class _DocumentMasks:
    """The mask of the batch in flight, built once for all layers: every layer gathers the same positions, so
    a packed batch costs one s x s mask per forward instead of one per layer, and autograd keeps one copy."""

    def __init__(self) -> None:
        self._positions: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None

    def __call__(self, positions: torch.Tensor) -> torch.Tensor | None:
        known = self._positions
        if known is None or known.shape != positions.shape or not torch.equal(known, positions):
            self._positions, self._mask = positions, _block_causal_mask(positions)
        return self._mask


def _core_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    *,
    masks: _DocumentMasks,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """sdpa over the full (gathered) sequence for this rank's heads."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, masks(kwargs["position_ids"]), **kwargs)


class SequenceParallelUnit:
    """DeepSpeed's Ulysses group state (`parallel_state_sp`) as the mpu DeepSpeed gets, stating that no
    tensor is split by tensor parallelism. That module aliases "model parallel" to the sequence group, so
    DeepSpeed's universal-checkpoint loader finds no tensor-parallel size (AttributeError) and its saver
    records tp_degree = sp in the model-states files."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)

    def get_tensor_model_parallel_world_size(self) -> int:
        return 1

    def get_tensor_model_parallel_rank(self) -> int:
        return 0


def install_ulysses(model: Any, *, sp_size: int, micro_batch: int) -> SequenceParallelUnit:
    """Create the sequence-parallel groups, route `model`'s attention through Ulysses, return the mpu
    DeepSpeed needs (sequence and sequence-data-parallel groups)."""
    from transformers import AttentionInterface

    from scaling.compat.deepspeed import any_batch_ulysses, sequence_parallel_state

    mpu = sequence_parallel_state(sp_size)
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    ulysses = any_batch_ulysses(
        attn=partial(_core_attention, masks=_DocumentMasks()),
        batch_size=micro_batch,
        attn_head_count=heads,
        attn_head_size=getattr(config, "head_dim", None) or config.hidden_size // heads,
        kv_head_count=getattr(config, "num_key_value_heads", None) or heads,
        num_hidden_layers=config.num_hidden_layers,
        process_group=mpu.get_sequence_parallel_group(),
        seq_length_is_variable=True,
    )

    def attention(
        module: Any, query: Any, key: Any, value: Any, attention_mask: Any, *args: Any, **kwargs: Any
    ):
        output, weights = ulysses(module, query, key, value, None, *args, **kwargs)
        # DeepSpeed returns [batch, seq, heads * head_dim]; HF attention functions return [batch, seq, heads,
        # head_dim], and some models (GPT-2) merge the last two dimensions themselves.
        return output.view(*output.shape[:2], query.shape[1], -1), weights

    AttentionInterface.register(ATTENTION_KEY, attention)
    model.set_attn_implementation(ATTENTION_KEY)
    return SequenceParallelUnit(mpu)


class SequenceParallelLayout(Layout):
    """Micro-batches are split along the sequence over `run.parallel.sequence_parallel` consecutive ranks
    (Ulysses attention); the objective sees this rank's `SequenceShard`."""

    name = "sequence-parallel"

    def build_engine(self, objective: Objective, tokenizer: Any) -> tuple[Any, Any]:
        run = self.run
        model = objective.build_model(run, tokenizer)
        export_config = copy.deepcopy(model.config)  # checkpoints name plain sdpa, not our attention key
        self.mpu = install_ulysses(
            model, sp_size=run.parallel.sequence_parallel, micro_batch=run.optim.micro_batch
        )
        self.sp_group = self.mpu.get_sequence_parallel_group()
        self.sp_rank = self.mpu.get_sequence_parallel_rank()
        config = {**run.deepspeed, "sequence_parallel_size": run.parallel.sequence_parallel}
        self.engine = self.initialize_engine(model, config=config, mpu=self.mpu)
        return self.engine, export_config

    def shard(self, batch: dict[str, torch.Tensor]) -> SequenceShard:
        sp = self.run.parallel.sequence_parallel
        return SequenceShard.of(
            batch,
            sp_rank=self.sp_rank,
            sp_size=sp,
            group=self.sp_group,
            grad_factor=gradient_factor(self.run.zero_stage, sp),
        )

    def loss(self, objective: Objective, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return objective.shard_loss(self.engine, self.shard(batch))

    def eval_totals(self, objective: Objective, batch: dict[str, torch.Tensor]) -> EvalTotals:
        return objective.shard_eval_totals(self.engine, self.shard(batch))
