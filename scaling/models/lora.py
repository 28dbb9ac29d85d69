"""LoRA through PEFT: a model transform applied to the run's model before the engine is built.

- `apply_lora(model, lora, seed)`: freeze the base, add adapters on the targets (PEFT's PeftModelForCausalLM).
  Only the adapters require grads, so the optimizer groups (scaling.engine.build.param_groups) hold only them
  and DeepSpeed keeps optimizer states for them alone; under ZeRO-3 the frozen base stays partitioned.
- `adapters_disabled(model)`: the frozen base's forward, through the same engine (a DPO reference model).
- `lora_problems(...)`: what is refused before launch, with the reason (exit 2).
- `merged_model(...)`: export from a checkpoint's consolidated weights, in one process: the adapter directory
  that `PeftModel.from_pretrained(base, DIR)` loads, and the base with the adapters merged in. The base is
  read from the run's --model directory in full precision (the training copy is 16-bit or 4-bit), and the
  adapters from the checkpoint files, never from a live ZeRO-3 module whose parameters are empty partitions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaling.errors import CheckpointError, Problem
from scaling.models.lora_config import ALL_LINEAR, LoraConfig, matches

if TYPE_CHECKING:
    import torch

__all__ = [
    "adapter_parameter_count",
    "adapters_disabled",
    "apply_lora",
    "is_lora_model",
    "lora_problems",
    "merged_model",
    "trainable_share",
]

ADAPTER_KEY = ".lora_"
"""What every adapter weight's name contains (PEFT: ...q_proj.lora_A.default.weight)."""
_ADAPTABLE = ("Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d")
"""Module classes PEFT's LoRA can wrap (by class name: torch's and transformers' Conv1D)."""


def peft_config(lora: LoraConfig, model_type: str, conv1d_targets: bool) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    targets = lora.target_names(model_type)
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=ALL_LINEAR if targets == [ALL_LINEAR] else targets,
        fan_in_fan_out=conv1d_targets,  # GPT-2's Conv1D stores its weight transposed
        task_type="CAUSAL_LM",
    )


def _conv1d_targets(model: Any, lora: LoraConfig) -> bool:
    targets = lora.target_names(model.config.model_type)
    return any(
        type(module).__name__ == "Conv1D" and matches(name, targets) for name, module in model.named_modules()
    )


def apply_lora(model: Any, lora: LoraConfig, *, seed: int) -> Any:
    """The model with frozen base weights and trainable adapters (a PeftModelForCausalLM).

    The adapters are created after the base (outside ZeRO-3's construction context, so DeepSpeed partitions
    them when the engine starts): seeding here makes their random init the same on every rank, whatever
    loading the base consumed."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training

    if lora.four_bit:
        # Norms and the head in fp32 and input grads on for checkpointed blocks, as QLoRA prescribes.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(getattr(model, "is_gradient_checkpointing", False))
        )
    torch.manual_seed(seed)
    return get_peft_model(model, peft_config(lora, model.config.model_type, _conv1d_targets(model, lora)))


def is_lora_model(model: Any) -> bool:
    return _peft_model(model) is not None


def _peft_model(model: Any) -> Any:
    """The PeftModel inside an engine (engine.module) or the model itself; None when there is none."""
    from peft import PeftModel

    seen = 0
    while not isinstance(model, PeftModel) and seen < 4:
        inner = model.__dict__.get("module") or model.__dict__.get("_modules", {}).get("module")
        if inner is None:
            return None
        model, seen = inner, seen + 1
    return model if isinstance(model, PeftModel) else None


@contextmanager
def adapters_disabled(model: Any) -> Iterator[None]:
    """Within the block, `model` (a DeepSpeed engine over a LoRA model, or the PeftModel itself) computes the
    frozen base model: the adapters are switched off, no weight changes. For a DPO reference without a second
    copy of the model; under ZeRO-3 the base's partitions are gathered by the same forward as always."""
    peft_model = _peft_model(model)
    if peft_model is None:
        raise TypeError(f"{type(model).__name__} has no LoRA adapters to disable (run without --lora-r?)")
    with peft_model.disable_adapter():
        yield


def _numel(param: torch.nn.Parameter) -> int:
    return int(getattr(param, "ds_numel", 0) or param.numel())  # ZeRO-3 partitions to an empty tensor


def trainable_share(model: Any) -> str:
    """'trainable 0.52% (73,728 / 14.1M)': parameters that get gradients (and optimizer states) of all."""
    total = trainable = 0
    for param in model.parameters():
        count = _numel(param)
        total += count
        if param.requires_grad:
            trainable += count
    share = 100.0 * trainable / max(total, 1)
    return f"trainable {share:.2f}% ({trainable:,} / {_human(total)})"


def _human(count: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


# -- before launch -----------------------------------------------------------------------------------------


def _meta_model(hf_config: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config)


def _adapted_modules(model: Any, lora: LoraConfig) -> list[tuple[str, Any]]:
    targets = lora.target_names(model.config.model_type)
    if targets == [ALL_LINEAR]:
        head = model.get_output_embeddings()
        return [
            (name, m)
            for name, m in model.named_modules()
            if type(m).__name__ in ("Linear", "Conv1D") and m is not head
        ]
    return [(name, m) for name, m in model.named_modules() if name and matches(name, targets)]


def lora_problems(
    lora: LoraConfig,
    *,
    hf_config: Any,
    has_weights: bool,
    task: str,
    parallel: Any,
    cuda: bool,
) -> list[Problem]:
    """Why this LoRA run cannot start (empty when it can); each problem names the option to change."""
    problems = []
    if lora.four_bit and not lora.enabled:
        problems.append(Problem("--lora-4bit", "QLoRA trains adapters: give --lora-r too"))
    if not lora.enabled:
        return problems
    if not has_weights:
        problems.append(
            Problem(
                "--lora-r",
                "LoRA adapts pretrained weights, but --model has none (a preset or config is initialised at "
                "random)",
                fix="give --model an HF directory with weights, or train without --lora-r",
            )
        )
    if task in ("mlm", "seq-cls"):
        problems.append(Problem("--lora-r", f"LoRA here fine-tunes causal LMs, not --task {task}"))
    for option, degree in (
        ("--pipeline-stages", parallel.pipeline_stages),
        ("--tensor-parallel", parallel.tensor_parallel),
        ("--sequence-parallel", parallel.sequence_parallel),
    ):
        if degree > 1:
            problems.append(
                Problem(
                    option,
                    "LoRA runs on the data-parallel layout (ZeRO 0-3) only: the pipeline, AutoTP and Ulysses "
                    "layouts rebuild or shard the very modules PEFT replaces with adapter layers",
                    degree,
                )
            )
    if lora.four_bit:
        from importlib.util import find_spec

        if not cuda:
            problems.append(
                Problem(
                    "--lora-4bit",
                    "QLoRA needs CUDA: the 4-bit base runs on bitsandbytes' GPU kernels, and this machine has "
                    "no GPU",
                    fix="train with --lora-r alone (16-bit base) on CPU",
                )
            )
        elif find_spec("bitsandbytes") is None:
            problems.append(
                Problem("--lora-4bit", "QLoRA needs bitsandbytes", fix="pip install bitsandbytes")
            )
    if hf_config is not None and task not in ("mlm", "seq-cls"):
        problems.extend(_target_problems(lora, hf_config))
    return problems


def _target_problems(lora: LoraConfig, hf_config: Any) -> list[Problem]:
    model = _meta_model(hf_config)
    targets = lora.target_names(hf_config.model_type)
    adapted = _adapted_modules(model, lora)
    leaves = [name for name, m in model.named_modules() if name and not list(m.children())]
    examples = list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in leaves))
    if not adapted:
        return [
            Problem(
                "--lora-targets",
                f"{', '.join(targets)} match no module of this {hf_config.model_type} model",
                fix=f"its modules include: {', '.join(examples[:12])}",
            )
        ]
    wrong = sorted({type(m).__name__ for _, m in adapted if type(m).__name__ not in _ADAPTABLE})
    if wrong:
        names = [name for name, m in adapted if type(m).__name__ in wrong]
        return [
            Problem(
                "--lora-targets",
                f"{', '.join(targets)} match {', '.join(names[:3])} ({', '.join(wrong)}), which LoRA cannot "
                "adapt: name linear layers",
                fix=f"its linear layers include: {', '.join(_linear_examples(model))}",
            )
        ]
    return []


def _linear_examples(model: Any) -> list[str]:
    names = [
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ in ("Linear", "Conv1D")
    ]
    return list(dict.fromkeys(names))[:12]


def adapter_parameter_count(hf_config: Any, lora: LoraConfig) -> tuple[int, int]:
    """(adapter parameters, base parameters) of `hf_config`'s causal LM with these adapters, counted on the
    meta device (nothing is allocated)."""
    model = _meta_model(hf_config)
    adapters = 0
    for _, module in _adapted_modules(model, lora):
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() != 2:
            continue
        rows, cols = weight.shape
        adapters += lora.r * (rows + cols)
    return adapters, sum(p.numel() for p in model.parameters())


# -- export ------------------------------------------------------------------------------------------------


def merged_model(run: dict[str, Any], config: Any, state: dict[str, Any], adapter_dir: Path) -> Any:
    """Write the adapter directory from a checkpoint's consolidated `state`; return the base model (read from
    the run's --model directory) with the adapters merged into its weights, a plain transformers model."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from scaling.models import describe_source

    lora = LoraConfig(**run["lora"])
    source = describe_source(run["model"]["source"])
    if not source.has_weights:  # pragma: no cover - refused before launch
        raise CheckpointError(f"the LoRA run's base model {source.location} has no weights to merge into")
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # QLoRA's 4-bit storage was for training: merge into the full base
    base = AutoModelForCausalLM.from_pretrained(
        source.location, config=config, local_files_only=True, dtype=torch.float32
    )
    model = get_peft_model(base, peft_config(lora, config.model_type, _conv1d_targets(base, lora)))
    adapter = {k: v for k, v in state.items() if ADAPTER_KEY in k}
    expected = {k for k in model.state_dict() if ADAPTER_KEY in k}
    if set(adapter) != expected:
        raise CheckpointError(
            f"the checkpoint's adapter weights do not match the model (missing {sorted(expected - set(adapter))[:3]},"
            f" unexpected {sorted(set(adapter) - expected)[:3]})"
        )
    empty = [k for k, v in adapter.items() if v.numel() == 0]
    if empty:
        raise CheckpointError(f"the checkpoint's adapter weights are empty partitions: {empty[:3]}")
    model.load_state_dict(adapter, strict=False)
    model.save_pretrained(adapter_dir)
    return model.merge_and_unload()
