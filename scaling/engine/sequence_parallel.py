"""Sequence-parallel training (DeepSpeed-Ulysses) for Hugging Face causal LMs.

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
  own tokens. DeepSpeed sums gradients over all ranks and divides by the data-parallel size, so the sum over a
  group of per-rank gradients must be the gradient of the group's loss, once.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from scaling.engine.trainer import TrainingRun

ATTENTION_KEY = "scaling_ulysses"
IGNORE = -100


def shard_batch(
    batch: dict[str, torch.Tensor], sp_rank: int, sp_size: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """This rank's slice of a clm micro-batch: model inputs (input_ids, position_ids) and shifted labels.

    Rows are padded on the right to a multiple of `sp_size` (pad targets are ignored; causal attention keeps
    real tokens from seeing right padding, which is why the attention mask can be dropped)."""
    input_ids = batch["input_ids"]
    rows, width = input_ids.shape
    labels = batch["labels"]
    positions = batch.get("position_ids")
    if positions is None:
        positions = torch.arange(width, device=input_ids.device).expand(rows, width)
    if "attention_mask" in batch:
        labels = labels.masked_fill(batch["attention_mask"] == 0, IGNORE)
    shift_labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)
    extra = -width % sp_size
    if extra:
        input_ids = torch.nn.functional.pad(input_ids, (0, extra), value=0)
        shift_labels = torch.nn.functional.pad(shift_labels, (0, extra), value=IGNORE)
        tail = positions[:, -1:] + torch.arange(1, extra + 1, device=positions.device)
        positions = torch.cat([positions, tail], dim=1)
    chunk = (width + extra) // sp_size
    piece = slice(sp_rank * chunk, (sp_rank + 1) * chunk)
    inputs = {
        "input_ids": input_ids[:, piece].contiguous(),
        "position_ids": positions[:, piece].contiguous(),
    }
    return inputs, shift_labels[:, piece].contiguous()


def token_loss_sum(logits: torch.Tensor, shift_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over this shard's targets (fp32) and their count."""
    loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return loss, (shift_labels != IGNORE).sum()


def gradient_factor(zero_stage: int, sp_size: int) -> int:
    """What the backward pass must scale gradients by so DeepSpeed's reduction yields the group's gradient.

    ZeRO 0-2 divide the all-reduced sum by the data-parallel size (world / sp): right as it is. ZeRO-3's
    default reduce-scatter (`reduce_scatter_coalesced`) divides by the whole sequence x data world instead,
    leaving gradients 1/sp too small (measured with SGD on DeepSpeed 0.19.8: update / gradient = 0.500 at
    sp=2; the gradient-norm parity test guards it)."""
    return sp_size if zero_stage == 3 else 1


def group_mean_loss(
    local_sum: torch.Tensor, local_count: torch.Tensor, group: Any, *, grad_factor: int = 1
) -> torch.Tensor:
    """The group's token-weighted mean loss, differentiable only through this rank's own tokens.

    Value: sum over the group / tokens in the group (equal on every peer). Gradient: grad_factor *
    d(local_sum) / tokens. Summed over the peers (DeepSpeed's gradient reduction does that), it is the gradient
    of the group mean (see gradient_factor)."""
    totals = torch.stack([local_sum.detach().double(), local_count.double()])
    dist.all_reduce(totals, group=group)
    count = totals[1].clamp(min=1).to(local_sum.dtype)
    others = (totals[0] - local_sum.detach().double()).to(local_sum.dtype)
    scaled = (
        local_sum * grad_factor - local_sum.detach() * (grad_factor - 1) if grad_factor != 1 else local_sum
    )
    return (scaled + others) / count


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
    import deepspeed.runtime.sequence_parallel.parallel_state_sp as mpu
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
    from transformers import AttentionInterface

    class _AnyBatchUlysses(UlyssesSPAttentionHF):
        """DeepSpeed fixes the micro-batch rows at construction; the last batch of a source may be shorter."""

        def forward(self, module: Any, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            rows = query.shape[0]
            if rows != self.batch_size:
                self.batch_size = rows
                heads, kv_heads, size = self.attn_head_count, self.global_kv_head_count, self.attn_head_size
                self.required_query_shape = torch.Size([1, rows, heads, size])
                self.required_key_value_shape = torch.Size([1, rows, kv_heads, size])
                self.required_context_shape = torch.Size([1, rows, size * heads // self.world_size])
            return super().forward(module, query, *args, **kwargs)

    mpu.initialize_sequence_parallel(sequence_parallel_size=sp_size)
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    ulysses = _AnyBatchUlysses(
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


class SequenceParallelRun(TrainingRun):
    """A TrainingRun whose micro-batches are split along the sequence over `run.parallel.sequence_parallel`
    consecutive ranks (Ulysses attention)."""

    def build_engine(self) -> tuple[Any, Any]:
        import copy

        from scaling.engine.build import make_model

        run = self.run
        model = make_model(run, self.tokenizer)
        export_config = copy.deepcopy(model.config)  # checkpoints name plain sdpa, not our attention key
        self.mpu = install_ulysses(
            model, sp_size=run.parallel.sequence_parallel, micro_batch=run.optim.micro_batch
        )
        self.sp_group = self.mpu.get_sequence_parallel_group()
        self.sp_rank = self.mpu.get_sequence_parallel_rank()
        config = {**run.deepspeed, "sequence_parallel_size": run.parallel.sequence_parallel}
        return self.initialize_engine(model, config=config, mpu=self.mpu), export_config

    def _shard_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, shift_labels = shard_batch(batch, self.sp_rank, self.run.parallel.sequence_parallel)
        logits = self.engine(**inputs, use_cache=False).logits
        return token_loss_sum(logits, shift_labels)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        local_sum, count = self._shard_loss(batch)
        factor = gradient_factor(self.run.zero_stage, self.run.parallel.sequence_parallel)
        return group_mean_loss(local_sum, count, self.sp_group, grad_factor=factor)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        import math

        engine = self.engine
        engine.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=engine.device)  # summed token loss, tokens
        for batch in self.eval_batches:
            local_sum, count = self._shard_loss({k: v.to(engine.device) for k, v in batch.items()})
            totals[0] += local_sum.double()
            totals[1] += count.double()
        dist.all_reduce(totals)
        engine.train()
        loss = (totals[0] / totals[1].clamp(min=1)).item()
        return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}
