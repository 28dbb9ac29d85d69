"""Build the pieces the training loop needs from the resolved run: tokenizer, model, parameter groups."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scaling.config.run import RunConfig
from scaling.models import build_model, describe_source

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Kept alive for the run: transformers consults it (through a weak reference) to partition parameters at
# construction time under ZeRO-3, so a model larger than one rank's memory is never materialised whole.
_ZERO3_CONTEXT: list[Any] = []


def load_run_tokenizer(run: RunConfig, rank: int) -> PreTrainedTokenizerBase:
    """The tokenizer the launching host prepared (run.model.tokenizer is always a directory by now)."""
    from transformers import AutoTokenizer

    assert run.model.tokenizer is not None, "the run's tokenizer is prepared before ranks start"
    return AutoTokenizer.from_pretrained(run.model.tokenizer, local_files_only=True)


def make_model(run: RunConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    if run.zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        _ZERO3_CONTEXT[:] = [HfDeepSpeedConfig(run.deepspeed)]
    model = build_model(
        describe_source(run.model.source),
        task=run.model.task,
        tokenizer=tokenizer,
        num_labels=run.model.num_labels,
    )
    if run.model.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def param_groups(model: PreTrainedModel, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases and norm weights (1-D tensors), as HF Trainer and Megatron do."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        shape = getattr(param, "ds_shape", param.shape)  # ZeRO-3 params are partitioned to an empty tensor
        (no_decay if len(shape) < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
