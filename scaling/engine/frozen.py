"""Frozen models beside the engine: evaluated every step, never trained or saved (the distillation teacher,
the DPO reference).

Under ZeRO-3 a frozen model gets its own DeepSpeed engine, partitioned with ZeRO-3 like the trained one and
without an optimizer, so a model larger than one rank's share never sits whole on any rank; elsewhere each
rank keeps a full copy in the run's precision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from scaling.config.run import RunConfig

__all__ = ["build_frozen", "frozen_deepspeed_config", "run_dtype", "zero3_init"]


def frozen_deepspeed_config(run: RunConfig) -> dict[str, Any]:
    """A frozen model's engine: ZeRO-3 partitioned like the trained model's, no optimizer, same precision."""
    zero = run.deepspeed.get("zero_optimization", {})
    section: dict[str, Any] = {"stage": 3}
    for key, value in zero.items():
        if key.startswith("stage3_") or key in ("offload_param", "param_persistence_threshold"):
            section[key] = value
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": run.optim.micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": section,
        "steps_per_print": 1 << 30,
    }
    for key in ("bf16", "fp16"):
        if run.deepspeed.get(key, {}).get("enabled"):
            config[key] = {"enabled": True}
    return config


def run_dtype(run: RunConfig) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.optim.precision, torch.float32)


@contextmanager
def zero3_init(ds_config: dict[str, Any]) -> Iterator[None]:
    """Partition parameters as transformers creates them (see scaling.engine.build._zero3_construction)."""
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    keep_alive = HfDeepSpeedConfig(ds_config)
    try:
        yield
    finally:
        del keep_alive
        unset_hf_deepspeed_config()


def build_frozen(run: RunConfig, build: Callable[[], Any], device: Any) -> Any:
    """`build()`'s model frozen (no gradients, eval mode): inside its own ZeRO-3 engine under ZeRO-3 (built
    partitioned), else whole on `device` in the run's precision."""
    if run.zero_stage == 3:
        import deepspeed

        ds_config = frozen_deepspeed_config(run)
        with zero3_init(ds_config):
            model = build()
        model.requires_grad_(False)
        engine, _, _, _ = deepspeed.initialize(model=model, config=ds_config, dist_init_required=False)
        engine.eval()
        return engine
    model = build().to(device=device, dtype=run_dtype(run))
    model.requires_grad_(False)
    model.eval()
    return model
