"""An HF decoder (GPT-2 or Llama family) as a `deepspeed.pipe.PipelineModule`.

The pipeline is a flat list of layers that pass a tuple `(hidden, attention_mask, position_ids)` from stage to
stage: embeddings, one layer per decoder block, the final norm, the LM head and the loss. Each wrapper keeps
the original HF submodule as `inner`, so the pipeline computes exactly what the HF model computes, and the
layer files of a pipeline checkpoint (`layer_XX-model_states.pt`, keys `inner.<name>`) map back to HF names
through `hf_prefixes()`.

Non-float tensors (the 2-D padding mask, the position ids) travel between stages without gradients. Every
block rebuilds the 4-D causal mask from them the way the HF model does once per forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from scaling.errors import ConfigError, Problem

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

BLOCK_TYPE = "DecoderBlockPipe"
"""Class name of the pipeline's decoder-block layers (what `type:` partitioning counts)."""
SUPPORTED = ("gpt2", "llama")
TIED_KEY = "embed"


@dataclass(frozen=True)
class PipeLayout:
    """The HF names behind each pipeline layer, in layer order (index = DeepSpeed's layer_XX)."""

    prefixes: list[str | None]
    """HF module path of each layer's `inner` (None: a layer without weights of its own)."""
    tied: bool
    """The LM head reuses the input embedding (TiedLayerSpec); its layer holds no separate weight."""


def family_of(config: PretrainedConfig) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        raise ConfigError(
            [
                Problem(
                    "--pipeline-stages",
                    f"pipeline parallelism supports the {' and '.join(SUPPORTED)} families, not {model_type}",
                    model_type,
                    fix="use --pipeline-stages 1 for this model",
                )
            ]
        )
    return model_type


def _tied(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "tie_word_embeddings", False))


def hf_prefixes(config: PretrainedConfig) -> PipeLayout:
    """Layer index -> HF module path, mirroring `build_pipeline_layers`."""
    family = family_of(config)
    tied = _tied(config)
    if family == "gpt2":
        blocks = [f"transformer.h.{i}" for i in range(config.n_layer)]
        prefixes: list[str | None] = ["transformer.wte", "transformer.wpe", *blocks, "transformer.ln_f"]
        prefixes.append("transformer.wte" if tied else "lm_head")
    else:
        blocks = [f"model.layers.{i}" for i in range(config.num_hidden_layers)]
        prefixes = ["model.embed_tokens", *blocks, "model.norm", "model.embed_tokens" if tied else "lm_head"]
    return PipeLayout(prefixes=prefixes, tied=tied)


def partition_method(method: str, config: PretrainedConfig) -> str:
    """Our `--partition-method` in DeepSpeed's terms. `type:<block>` accepts the HF block class name (e.g.
    `type:GPT2Block`, `type:LlamaDecoderLayer`) or our wrapper's; both mean "balance the decoder blocks"."""
    if method in ("parameters", "uniform"):
        return method
    if method.startswith("type:"):
        wanted = method.split(":", 1)[1]
        block = {"gpt2": "GPT2Block", "llama": "LlamaDecoderLayer"}[family_of(config)]
        if wanted.lower() in (block.lower(), BLOCK_TYPE.lower()):
            return f"type:{BLOCK_TYPE}"
        raise ConfigError(
            [
                Problem(
                    "--partition-method",
                    f"this {config.model_type} model has no layer type {wanted}",
                    method,
                    fix=f"type:{block}, parameters or uniform",
                )
            ]
        )
    raise ConfigError([Problem("--partition-method", "must be parameters, uniform or type:<block>", method)])


# -- layers ---------------------------------------------------------------------------------------------


def _positions(ids: torch.Tensor) -> torch.Tensor:
    # .contiguous(): an expanded view cannot be sent point-to-point between stages.
    return torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1).contiguous()


class EmbedPipe(nn.Module):
    """Token embedding; the first layer. Input: `(input_ids, attention_mask, position_ids)`."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.inner = embedding

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        ids, mask, pos = inputs
        return self.inner(ids), mask, pos


def tied_head(module: EmbedPipe, inputs: Any) -> torch.Tensor:
    """The LM head as the transposed input embedding (the tied layer's forward on the last stage)."""
    hidden = inputs[0] if isinstance(inputs, tuple) else inputs
    return F.linear(hidden, module.inner.weight)


class GPT2PositionPipe(nn.Module):
    """GPT-2's learned positions and embedding dropout (a layer of its own: the tied embedding layer exists
    on the first and the last stage, and only the tied weight is kept in sync between them)."""

    def __init__(self, wpe: nn.Embedding, drop: nn.Dropout):
        super().__init__()
        self.inner = wpe
        self.drop = drop

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        hidden, mask, pos = inputs
        return self.drop(hidden + self.inner(pos)), mask, pos


def _mask_4d(config: PretrainedConfig, hidden: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> Any:
    from transformers.masking_utils import create_causal_mask

    # An all-ones padding mask says nothing; passing None instead lets HF detect packed documents from
    # restarting position ids, as the plain model does for batches without a mask.
    padding = None if bool(mask.all()) else mask
    return create_causal_mask(
        config=config, inputs_embeds=hidden, attention_mask=padding, cache=None, position_ids=pos
    )


class DecoderBlockPipe(nn.Module):
    """One HF decoder block (GPT2Block or LlamaDecoderLayer) with the mask rebuilt from the carried tensors."""

    def __init__(self, block: nn.Module, config: PretrainedConfig, rotary: nn.Module | None = None):
        super().__init__()
        self.inner = block
        self.config = config
        # Llama's rotary embedding holds only a non-persistent buffer: sharing the HF module costs nothing.
        self.rotary = rotary

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        hidden, mask, pos = inputs
        mask4 = _mask_4d(self.config, hidden, mask, pos)
        if self.rotary is None:
            out = self.inner(hidden, None, mask4, None, position_ids=pos)
        else:
            out = self.inner(
                hidden,
                attention_mask=mask4,
                position_ids=pos,
                position_embeddings=self.rotary(hidden, position_ids=pos),
            )
        out = out[0] if isinstance(out, tuple) else out
        return out, mask, pos


class NormPipe(nn.Module):
    """Final norm; drops the mask and positions, which nothing after it needs."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.inner = norm

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.inner(inputs[0])


class HeadPipe(nn.Module):
    """An untied LM head."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.inner = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.inner(hidden)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """HF's causal-LM loss: predict token t+1 from position t, mean over labelled tokens, in fp32."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
    )


def build_pipeline_layers(model: PreTrainedModel) -> list[Any]:
    """LayerSpecs over the submodules of an HF causal LM (already built and initialised on every rank, so
    every stage starts from the weights the plain model would have)."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    config = model.config
    family = family_of(config)
    tied = _tied(config)
    base: Any  # the HF backbone; nn.Module's __getattr__ types submodules as Tensor | Module
    if family == "gpt2":
        base = model.transformer
        embed, blocks, norm = base.wte, list(base.h), base.ln_f
        rotary = None
    else:
        base = model.model
        embed, blocks, norm = base.embed_tokens, list(base.layers), base.norm
        rotary = base.rotary_emb
    if tied:
        first = TiedLayerSpec(TIED_KEY, EmbedPipe, embed, tied_weight_attr=["inner.weight"])
        last = TiedLayerSpec(
            TIED_KEY, EmbedPipe, embed, forward_fn=tied_head, tied_weight_attr=["inner.weight"]
        )
    else:
        first = LayerSpec(EmbedPipe, embed)
        last = LayerSpec(HeadPipe, model.lm_head)
    layers: list[Any] = [first]
    if family == "gpt2":
        layers.append(LayerSpec(GPT2PositionPipe, base.wpe, base.drop))
    layers.extend(LayerSpec(DecoderBlockPipe, block, config, rotary) for block in blocks)
    layers.append(LayerSpec(NormPipe, norm))
    layers.append(last)
    return layers


def build_pipeline_module(
    model: PreTrainedModel,
    *,
    num_stages: int,
    partition: str,
    activation_checkpoint_interval: int,
    variable_length: bool = False,
) -> Any:
    """The PipelineModule for `model`, split into `num_stages` stages.

    `variable_length`: micro-batches differ in length (padded, unpacked data). The engine then sends each
    activation's shape along with it; by default it sends shapes once and reuses the first buffers."""
    from deepspeed.pipe import PipelineModule

    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False
    return PipelineModule(
        build_pipeline_layers(model),
        num_stages=num_stages,
        loss_fn=causal_lm_loss,
        partition_method=partition_method(partition, model.config),
        activation_checkpoint_interval=activation_checkpoint_interval,
        # Only the blocks: checkpointing the embedding (reentrant, integer inputs) has nothing to
        # differentiate and fails in backward.
        checkpointable_layers=[BLOCK_TYPE],
        dynamic_shape=variable_length,
    )


def pipe_inputs(batch: dict[str, torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """A data-stream micro-batch as the pipeline engine wants it: ((ids, mask, positions), labels)."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    pos = batch.get("position_ids")
    pos = _positions(ids) if pos is None else pos.contiguous()
    return (ids.contiguous(), mask.contiguous(), pos), batch["labels"].contiguous()


def layer_state_to_hf(layout: PipeLayout, layer_states: dict[int, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Merge per-layer state dicts (keys `inner.<name>`) into one HF state dict."""
    out: dict[str, Any] = {}
    for index, state in sorted(layer_states.items()):
        prefix = layout.prefixes[index]
        if prefix is None:
            continue
        for key, value in state.items():
            if key.startswith("inner."):
                out[f"{prefix}.{key[len('inner.') :]}"] = value
    return out


# -- checks before launch ---------------------------------------------------------------------------------

AUTOTP_UNSUPPORTED = {
    "gpt2": "DeepSpeed 0.19.8 AutoTP rejects GPT-2 (Conv1D layers with a kernel-injection policy)",
}


def parallel_problems(
    config: PretrainedConfig,
    *,
    task: str,
    pipeline_stages: int,
    tensor_parallel: int,
    partition: str,
    on_nan: str,
    sequence_parallel: int = 1,
) -> list[Problem]:
    """Model/option combinations the pipeline, AutoTP and Ulysses engines cannot run, each with its reason."""
    problems: list[Problem] = []
    model_type = getattr(config, "model_type", None)
    if sequence_parallel > 1:
        problems.extend(sequence_parallel_problems(config, task=task, sequence_parallel=sequence_parallel))
    if pipeline_stages > 1:
        if tensor_parallel > 1:
            problems.append(
                Problem(
                    "--tensor-parallel",
                    "cannot be combined with --pipeline-stages (DeepSpeed's pipeline engine does not run AutoTP)",
                    tensor_parallel,
                    fix="use either pipeline or tensor parallelism, with data parallelism",
                )
            )
        if task != "clm":
            problems.append(Problem("--task", "pipeline parallelism trains causal LMs (clm) only", task))
        if model_type not in SUPPORTED:
            problems.append(
                Problem(
                    "--pipeline-stages",
                    f"pipeline parallelism supports the {' and '.join(SUPPORTED)} families, not {model_type}",
                    pipeline_stages,
                )
            )
        else:
            try:
                partition_method(partition, config)
            except ConfigError as err:
                problems.extend(err.problems)
            layers = len(hf_prefixes(config).prefixes)
            if pipeline_stages > layers:
                problems.append(
                    Problem(
                        "--pipeline-stages",
                        f"more stages than the model's {layers} pipeline layers",
                        pipeline_stages,
                    )
                )
        if on_nan == "skip":
            problems.append(
                Problem(
                    "--on-nan",
                    "a pipelined step runs all its micro-batches at once and cannot skip one",
                    on_nan,
                    fix="use --on-nan stop with --pipeline-stages",
                )
            )
    if tensor_parallel > 1 and model_type in AUTOTP_UNSUPPORTED:
        problems.append(
            Problem(
                "--tensor-parallel",
                AUTOTP_UNSUPPORTED[model_type],
                tensor_parallel,
                fix="use a Llama-family model",
            )
        )
    return problems


def sequence_parallel_problems(
    config: PretrainedConfig, *, task: str, sequence_parallel: int
) -> list[Problem]:
    """Ulysses splits causal decoders whose attention goes through transformers' attention interface."""
    problems: list[Problem] = []
    if task != "clm":
        problems.append(
            Problem(
                "--task",
                "sequence parallelism trains causal LMs (clm) only: it drops the padding mask, which causal "
                "attention with right padding does not need",
                task,
            )
        )
        return problems
    from scaling.compat.transformers import causal_lm_class, supports_attention_backend

    text_config = config.get_text_config()
    layer_types = getattr(text_config, "layer_types", None) or []
    windowed = "sliding_attention" in layer_types or (
        not layer_types
        and getattr(text_config, "sliding_window", None)
        and getattr(text_config, "use_sliding_window", True)
    )
    if windowed:
        problems.append(
            Problem(
                "--sequence-parallel",
                "the model uses sliding-window attention, which the Ulysses attention here does not apply "
                "(it attends causally over the whole sequence)",
                sequence_parallel,
            )
        )
    model_class = causal_lm_class(config)
    if model_class is None or not supports_attention_backend(model_class):
        problems.append(
            Problem(
                "--sequence-parallel",
                f"{getattr(config, 'model_type', None)} does not route attention through transformers' "
                "attention interface, which Ulysses replaces",
                sequence_parallel,
                fix="use a Llama-, Qwen-, Mistral- or GPT-2-family model",
            )
        )
    return problems


def pipe_to_hf_name(name: str, layout: PipeLayout) -> str:
    """A PipelineModule parameter name (`<layer>.inner.<name>` or `tied_modules.<key>.inner.<name>`) in HF terms."""
    parts = name.split(".")
    if parts[0] == "tied_modules":  # the tied input embedding
        prefix, rest = layout.prefixes[0], parts[3:]
    else:
        prefix, rest = layout.prefixes[int(parts[0])], parts[2:]
    if prefix is None or parts[-len(rest) - 1] != "inner":
        raise ValueError(f"{name} is not a parameter of an HF pipeline layer")
    return ".".join([prefix, *rest])


def named_hf_parameters(module: Any, config: PretrainedConfig) -> dict[str, torch.Tensor]:
    """This stage's parameters of a PipelineModule built by `build_pipeline_module`, under HF names."""
    layout = hf_prefixes(config)
    return {pipe_to_hf_name(name, layout): param for name, param in module.named_parameters()}
