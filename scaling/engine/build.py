"""Build the pieces the training loop needs from the resolved run: tokenizer, model, parameter groups."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from scaling.config.run import RunConfig
from scaling.models import build_model, describe_source

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def load_run_tokenizer(run: RunConfig, rank: int) -> PreTrainedTokenizerBase:
    """The tokenizer the launching host prepared (run.model.tokenizer is always a directory by now)."""
    from transformers import AutoTokenizer

    assert run.model.tokenizer is not None, "the run's tokenizer is prepared before ranks start"
    return AutoTokenizer.from_pretrained(run.model.tokenizer, local_files_only=True)


def make_model(run: RunConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The run's model: built (or loaded) for its task, then its transforms: activation checkpointing and
    LoRA adapters over the frozen base (scaling.models.lora)."""
    transplant = None
    if run.embedding_transplant:
        from scaling.models.transplant import TransplantPlan

        transplant = TransplantPlan.load(run.output / run.embedding_transplant["plan"])
    with _zero3_construction(run):
        model = build_model(
            describe_source(run.model.source),
            task=run.model.task,
            tokenizer=tokenizer,
            num_labels=run.model.num_labels,
            quantization=_four_bit(run) if run.lora.four_bit else None,
            transplant=transplant,
            seed=run.optim.seed,
        )
    if run.model.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if run.lora.enabled:
        from scaling.models.lora import apply_lora

        model = apply_lora(model, run.lora, seed=run.optim.seed)
    return model


def _four_bit(run: RunConfig) -> Any:
    """QLoRA's base: NF4 weights computing in the run's 16-bit type; stored in that type too, so that ZeRO-3
    can partition them like any other parameter."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.float16 if run.optim.precision == "fp16" else torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=compute,
    )


@contextmanager
def _zero3_construction(run: RunConfig) -> Iterator[None]:
    """Under ZeRO-3, let transformers partition parameters as they are created (deepspeed.zero.Init), so a
    model larger than one rank's memory is never materialised whole. transformers finds the config through
    a weak reference; it must not outlive construction, or later single-rank model builds (the final export
    on rank 0) would try to partition collectively and hang."""
    if run.zero_stage != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    keep_alive = HfDeepSpeedConfig(run.deepspeed)
    try:
        yield
    finally:
        del keep_alive
        unset_hf_deepspeed_config()


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases and norm weights (1-D tensors), as HF Trainer and Megatron do."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        shape = getattr(param, "ds_shape", param.shape)  # ZeRO-3 params are partitioned to an empty tensor
        (no_decay if len(shape) < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
