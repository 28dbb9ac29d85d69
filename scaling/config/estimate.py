"""Memory estimate of a DeepSpeed run: per-GPU and per-node CPU bytes for model states, activations, buffers.

Model states follow the ZeRO paper (Rajbhandari et al. 2020, §3.1) for mixed-precision Adam, Ψ parameters
and a data-parallel (sharding) degree N: 16-bit params 2Ψ, 16-bit grads 2Ψ, and K = 12 bytes per parameter of
optimizer state (fp32 master copy, Adam m and v):

    stage 0: (2 + 2 + 12)Ψ = 16Ψ     stage 1: 2Ψ + 2Ψ + 12Ψ/N
    stage 2: 2Ψ + (2 + 12)Ψ/N        stage 3: (2 + 2 + 12)Ψ/N

fp32 training: stage 0 keeps 4Ψ params, 4Ψ grads and 8Ψ Adam moments (the params are the master copy). With
ZeRO >= 1 DeepSpeed still clones an fp32 master partition for its flat optimizer groups, so K = 12 per
partition as in mixed precision; the params and grads are 4 bytes instead of 2.

Offload: `offload_optimizer` moves the optimizer states and the fp32 gradient partition to CPU (ZeRO-Offload);
`offload_param` (stage 3) moves the 16-bit parameter partition to CPU; an NVMe device moves them to disk.

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation"), 16-bit, per transformer layer:
s*b*h*(34 + 5*a*s/h) bytes without recomputation (tensor parallel t: s*b*h*(10 + 24/t + 5*a*s/(h*t))), and
2*s*b*h with full recomputation. The 5*a*s/h term is the stored a x s x s attention scores (softmax output,
dropout mask and output); a fused kernel (SDPA/flash, transformers' default for the models that support it)
keeps none of them, so for such models the term is left out (measured on an H200: a 1B Llama at s=2048, b=16
peaked at 75.2 GiB where the eager formula gave 312.6 GiB) (only each layer's input is kept). Logits add s*b*V*(2 + 4 + 4): the 16-bit
logits, their fp32 upcast for the loss and its fp32 gradient. A 1F1B pipeline's first stage holds p micro-batches
of L/p layers, i.e. L layers' worth, so pipelining does not shrink the peak.

Nothing here imports torch or deepspeed; counting a model's parameters (model_shape) imports transformers and
builds the model on the meta device, so nothing is allocated.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scaling.config.keys import canonical_path
from scaling.config.schema import offload_device, zero_stage
from scaling.distributed.topology import Topology
from scaling.errors import ConfigError, Problem

GIB = 1024**3
FRAGMENTATION = 0.10
"""Share of the total added for allocator fragmentation and small temporaries."""


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model."""

    name: str
    """Where it came from: a preset name, a directory or a config.json."""
    params: int
    """Trainable parameters Ψ (tied weights counted once)."""
    hidden: int
    """Hidden size h."""
    layers: int
    """Transformer layers L."""
    heads: int
    """Attention heads a."""
    vocab: int
    """Vocabulary size V (logits width)."""
    max_positions: int | None = None
    """Longest sequence the model accepts, when it says."""
    fused_attention: bool = False
    """Attention runs in a fused kernel (SDPA/flash) that never stores the a x s x s scores."""
    frozen: int = 0
    """Parameters held frozen (LoRA's base): working weights only, no gradients, no optimizer states."""
    frozen_bits: int | None = None
    """Bits per frozen parameter: 4 for QLoRA's NF4 base (a floor: bitsandbytes leaves the embeddings and the
    head in 16 bits); None: the run's precision (16 bits, fp32: 32)."""


@dataclass(frozen=True)
class Layout:
    """The run the estimate is for."""

    nodes: int = 1
    """Nodes."""
    gpus_per_node: int = 1
    """GPUs (ranks) per node."""
    tensor_parallel: int = 1
    """AutoTP degree t."""
    pipeline_stages: int = 1
    """Pipeline degree p."""
    sequence_parallel: int = 1
    """Ulysses degree: each rank holds s / sp tokens of every sample, ZeRO partitions over dp x sp ranks."""
    seq_len: int = 2048
    """Tokens per sample s."""
    micro_batch: int = 1
    """Samples per rank per forward pass b."""
    activation_checkpointing: bool = False
    """Full recomputation: keep only each layer's input."""

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def topology(self) -> Topology:
        return Topology.unchecked(self)

    @property
    def data_parallel(self) -> int:
        return self.topology.data_parallel

    @property
    def zero_partitions(self) -> int:
        """Ranks that share one copy of the model states: data-parallel ranks, and sequence peers with them."""
        return self.topology.zero_partition


@dataclass(frozen=True)
class Precision:
    """Bytes per element of what training keeps."""

    name: str
    """fp32, bf16 or fp16."""
    param: int
    """Bytes per parameter of the model's (working) weights."""
    grad: int
    """Bytes per gradient element."""
    activation_scale: float
    """Factor on Korthikanti's 16-bit activation bytes."""


PRECISION = {
    "bf16": Precision("bf16", 2, 2, 1.0),
    "fp16": Precision("fp16", 2, 2, 1.0),
    "fp32": Precision("fp32", 4, 4, 2.0),
}


@dataclass
class MemoryEstimate:
    """Bytes per GPU and per node for one ZeRO stage; every field is in bytes unless said otherwise."""

    stage: int
    """ZeRO stage."""
    precision: str
    """fp32, bf16 or fp16."""
    offload_optimizer: str
    """none, cpu or nvme."""
    offload_param: str
    """none, cpu or nvme."""
    params_per_gpu: int
    """Parameters on one GPU after tensor/pipeline slicing (Ψ/(t*p))."""
    data_parallel: int
    """N, the degree optimizer states (and, by stage, grads and params) are partitioned over."""
    gpu_params: int
    """Working (16-bit, or fp32) parameters held on the GPU."""
    gpu_grads: int
    """Gradients held on the GPU."""
    gpu_optimizer: int
    """fp32 master copy and Adam moments held on the GPU."""
    gpu_activations: int
    """Activations of one micro-batch (all layers), plus logits."""
    gpu_buffers: int
    """Communication buckets from the config, plus a fragmentation margin."""
    cpu_per_rank: int
    """Host memory one rank holds for offloaded states."""
    cpu_per_node: int
    """cpu_per_rank times the ranks on a node."""
    nvme_per_rank: int
    """Bytes one rank swaps to NVMe."""
    notes: list[str] = field(default_factory=list)
    """How the figures were derived."""

    @property
    def gpu_model_states(self) -> int:
        return self.gpu_params + self.gpu_grads + self.gpu_optimizer

    @property
    def gpu_total(self) -> int:
        return self.gpu_model_states + self.gpu_activations + self.gpu_buffers

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["gpu_model_states"] = self.gpu_model_states
        out["gpu_total"] = self.gpu_total
        return out


def model_states(
    psi: int, stage: int, n: int, precision: str, offload_optimizer: str = "none", offload_param: str = "none"
) -> tuple[dict[str, int], dict[str, int]]:
    """(on GPU, offloaded) bytes of params, grads and optimizer states for Ψ = psi parameters."""
    p = PRECISION[precision]
    full_params, full_grads = p.param * psi, p.grad * psi
    if precision == "fp32" and stage == 0:
        optim = 8 * psi  # the fp32 params are the master copy: only Adam's m and v
    else:
        optim = 12 * psi // n if stage >= 1 else 12 * psi
    params = full_params // n if stage == 3 else full_params
    grads = full_grads // n if stage >= 2 else full_grads
    gpu = {"params": params, "grads": grads, "optimizer": optim}
    off = {"params": 0, "grads": 0, "optimizer": 0}
    if offload_optimizer != "none" and stage >= 1:
        # ZeRO-Offload: Adam runs on the host over fp32 partitions; the gradient partition goes there as fp32.
        off["optimizer"] = optim
        off["grads"] = 4 * psi // n
        gpu["optimizer"] = 0
        if stage >= 2:
            gpu["grads"] = p.grad * psi // n  # the 16-bit partition is kept for the copy to the host
    if offload_param != "none" and stage == 3:
        off["params"] = params
        gpu["params"] = 0  # only the live/prefetched params (counted as buffers)
    return gpu, off


def activation_bytes(shape: ModelShape, layout: Layout, precision: str) -> int:
    s, b, h, a = layout.seq_len, layout.micro_batch, shape.hidden, shape.heads
    t = layout.tensor_parallel
    scores = 0.0 if shape.fused_attention else 5 * a * s / (h * t)
    per_layer: float
    if layout.activation_checkpointing:
        per_layer = 2 * s * b * h
    elif t == 1:
        per_layer = s * b * h * (34 + scores)
    else:
        per_layer = s * b * h * (10 + 24 / t + scores)
    layers = shape.layers * PRECISION[precision].activation_scale * per_layer
    logits = s * b * shape.vocab * (2 + 4 + 4) / t
    # Ulysses: every token-local tensor holds s / sp tokens, and each rank's attention scores cover all s
    # positions for a / sp heads: everything above divides by sp.
    return int(layers + logits) // layout.sequence_parallel


def estimate(
    shape: ModelShape, layout: Layout, ds_config: dict[str, Any], precision: str, stage: int | None = None
) -> MemoryEstimate:
    """The estimate for the resolved `ds_config` (or for it with another ZeRO `stage`)."""
    stage = zero_stage(ds_config) if stage is None else stage
    opt_dev = offload_device(ds_config, "optimizer") if stage >= 1 else "none"
    par_dev = offload_device(ds_config, "param") if stage == 3 else "none"
    psi = shape.params // (layout.tensor_parallel * layout.pipeline_stages)
    n = layout.zero_partitions
    gpu, off = model_states(psi, stage, n, precision, opt_dev, par_dev)
    frozen = shape.frozen // (layout.tensor_parallel * layout.pipeline_stages)
    if frozen:
        bits = shape.frozen_bits or 8 * PRECISION[precision].param
        held = frozen * bits // 8 // (n if stage == 3 else 1)
        if par_dev != "none":
            off["params"] += held
        else:
            gpu["params"] += held
    acts = activation_bytes(shape, layout, precision)
    buffers = _bucket_bytes(ds_config, stage, PRECISION[precision].grad, psi, gathered=psi + frozen)
    base = sum(gpu.values()) + acts + buffers
    buffers += int(FRAGMENTATION * base)
    host = {k: v for k, v in off.items() if k != "params" or par_dev == "cpu"}
    if opt_dev == "nvme":
        host = {k: v for k, v in host.items() if k != "optimizer"}
    cpu = sum(host.values())
    nvme = (off["optimizer"] if opt_dev == "nvme" else 0) + (off["params"] if par_dev == "nvme" else 0)
    notes = [
        f"Ψ = {shape.params:,} parameters / (tp {layout.tensor_parallel} x pp {layout.pipeline_stages})"
        f" = {psi:,} per GPU; N = {n}",
        f"activations: L={shape.layers} s={layout.seq_len} b={layout.micro_batch} h={shape.hidden} "
        f"a={shape.heads}{' with full recomputation' if layout.activation_checkpointing else ''}"
        f"{'; fused attention (no stored scores)' if shape.fused_attention else ''}",
    ]
    if frozen:
        notes.append(
            f"LoRA: Ψ counts the adapters alone; the frozen base ({shape.frozen:,}) adds its working weights "
            f"in {shape.frozen_bits or 8 * PRECISION[precision].param} bits, no gradients or optimizer states"
        )
    return MemoryEstimate(
        stage=stage,
        precision=precision,
        offload_optimizer=opt_dev,
        offload_param=par_dev,
        params_per_gpu=psi,
        data_parallel=n,
        gpu_params=gpu["params"],
        gpu_grads=gpu["grads"],
        gpu_optimizer=gpu["optimizer"],
        gpu_activations=acts,
        gpu_buffers=buffers,
        cpu_per_rank=cpu,
        cpu_per_node=cpu * layout.gpus_per_node,
        nvme_per_rank=nvme,
        notes=notes,
    )


def _bucket_bytes(
    config: dict[str, Any], stage: int, grad_bytes: int, psi: int, gathered: int | None = None
) -> int:
    """Buffers ZeRO allocates: the gradient reduce bucket (two with overlap_comm) and, at stage 3, the prefetch
    bucket of gathered parameters. Each is capped at the parameter count (trainable `psi` for gradients, all
    `gathered` parameters for the prefetch): a bucket never holds more. Stage 1/2 all-gather into the existing
    flat parameters, so allgather_bucket_size only limits a call's size."""
    zero = config.get("zero_optimization") or {}

    def num(key: str, default: int, cap: int = psi) -> int:
        # DeepSpeed's model takes a field under its name or its alias (stage3_prefetch_bucket_size and
        # prefetch_bucket_size are one field): read whichever the file wrote.
        names = [
            k
            for k in zero
            if canonical_path(f"zero_optimization.{k}") == canonical_path(f"zero_optimization.{key}")
        ]
        value = zero[names[0]] if names else default
        count = int(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
        return min(count, cap)

    if stage == 0:
        return 0
    reduce = num("reduce_bucket_size", 500_000_000) * grad_bytes
    if zero.get("overlap_comm"):
        reduce *= 2  # one bucket fills while the other is reduced
    gather = num("stage3_prefetch_bucket_size", 50_000_000, gathered or psi) * grad_bytes if stage == 3 else 0
    return reduce + gather


def stage_table(
    shape: ModelShape, layout: Layout, ds_config: dict[str, Any], precision: str
) -> list[MemoryEstimate]:
    """The configured estimate plus each plain ZeRO stage and the offload variants, for comparison."""
    rows = []
    for stage in (0, 1, 2, 3):
        plain = _with_zero(ds_config, stage, {})
        rows.append(estimate(shape, layout, plain, precision, stage))
    rows.append(
        estimate(shape, layout, _with_zero(ds_config, 2, {"offload_optimizer": {"device": "cpu"}}), precision)
    )
    rows.append(
        estimate(
            shape,
            layout,
            _with_zero(
                ds_config, 3, {"offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}
            ),
            precision,
        )
    )
    return rows


def _with_zero(config: dict[str, Any], stage: int, extra: dict[str, Any]) -> dict[str, Any]:
    zero = {
        k: v
        for k, v in (config.get("zero_optimization") or {}).items()
        if k not in ("offload_optimizer", "offload_param", "cpu_offload", "cpu_offload_param")
    }
    return {**config, "zero_optimization": {**zero, **extra, "stage": stage}}


# -- models ------------------------------------------------------------------------------------------------


def model_shape(source: str, vocab_size: int = 4096, lora: Any = None) -> ModelShape:
    """Count a model's parameters without allocating them: a preset name, an HF directory or a config.json.

    `vocab_size` is used for presets, whose vocabulary comes from the tokenizer at training time. With `lora`
    (a LoraConfig with r > 0) the trainable parameters are the adapters and the model's own are frozen.
    """
    from transformers import AutoConfig  # deferred: ~4 s, only the estimate and explain with --model need it
    from transformers.utils import logging as hf_logging

    # Config sanity warnings (e.g. GPT-2's default bos id outside a small vocab) are not ours to report here.
    hf_logging.set_verbosity_error()

    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError([Problem("--model", "directory has no config.json", source)])
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    elif path.is_file():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            config = AutoConfig.for_model(**raw)
        except (json.JSONDecodeError, ValueError, KeyError) as err:
            raise ConfigError([Problem("--model", f"not an HF config.json: {err}", source)]) from None
    else:
        presets = _model_presets()
        if source not in presets:
            raise ConfigError(
                [
                    Problem(
                        "--model",
                        "neither a directory, a config.json nor a model preset",
                        source,
                        fix=f"presets: {', '.join(sorted(presets)) or 'none installed'}",
                    )
                ]
            )
        raw = {"vocab_size": vocab_size, **presets[source]}
        config = AutoConfig.for_model(**raw)
    params, attention = _built_model_facts(config)
    frozen, frozen_bits = 0, None
    if lora is not None and lora.enabled:
        from scaling.models.lora import adapter_parameter_count

        params, frozen = adapter_parameter_count(config, lora)
        frozen_bits = 4 if lora.four_bit else None
    return ModelShape(
        name=source,
        params=params,
        frozen=frozen,
        frozen_bits=frozen_bits,
        fused_attention=attention in FUSED_ATTENTION,
        hidden=_attr(config, "hidden_size", "n_embd", "d_model"),
        layers=_attr(config, "num_hidden_layers", "n_layer", "num_layers"),
        heads=_attr(config, "num_attention_heads", "n_head"),
        vocab=_attr(config, "vocab_size"),
        max_positions=getattr(config, "max_position_embeddings", None)
        or getattr(config, "n_positions", None),
    )


def _model_presets() -> dict[str, dict[str, Any]]:
    try:  # the model presets belong to scaling.models; until it ships, only files and directories work
        from scaling.models.presets import PRESETS
    except ImportError:
        return {}
    return dict(PRESETS)


def _attr(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ConfigError([Problem("--model", f"config has none of {', '.join(names)}", type(config).__name__)])


FUSED_ATTENTION = frozenset({"sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"})
"""transformers attention implementations that do not keep the attention scores for backward."""


def count_parameters(config: Any) -> int:
    """Parameters of the model `config` describes, built on the meta device (no memory is allocated)."""
    return _built_model_facts(config)[0]


def _built_model_facts(config: Any) -> tuple[int, str]:
    """Parameters and the attention implementation transformers picks for `config` (its default when the
    config names none), from the model built on the meta device."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    with torch.device("meta"):
        for auto in (AutoModelForCausalLM, AutoModelForMaskedLM, AutoModel):
            try:
                model = auto.from_config(config)
                break
            except ValueError:
                continue
        else:
            raise ConfigError(
                [Problem("--model", "transformers cannot build this architecture", config.model_type)]
            )
    attention = str(getattr(model.config, "_attn_implementation", None) or "eager")
    return sum(p.numel() for p in model.parameters()), attention


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"
