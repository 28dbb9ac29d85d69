"""Typed settings of each compression step. The CLI and the pipeline recipe both build these."""

from __future__ import annotations

from dataclasses import dataclass, field

DISTILL_CONFIG_FILE = "distill_config.json"
"""The resolved distillation settings, beside run_config.json and in every checkpoint of a distillation."""

WOQ_METHODS = ("rtn", "gptq", "awq")
"""Weight-only methods: weights stored as int4/int8 + scales; activations stay fp32."""
PT2E_METHODS = ("dynamic", "static")
"""Int8 activation+weight methods through torch.export (PT2E)."""
IPEX_METHODS = ("smoothquant",)
"""Methods INC implements only through intel_extension_for_pytorch."""
QUANT_METHODS = WOQ_METHODS + PT2E_METHODS + IPEX_METHODS
CALIBRATED = ("gptq", "awq", "static", "smoothquant")
"""Methods that need calibration data."""


@dataclass(kw_only=True)
class QuantizeConfig:
    """How to quantize a model with Intel Neural Compressor."""

    method: str = "rtn"
    """rtn, gptq, awq (weight-only), dynamic, static (int8 PT2E) or smoothquant (needs IPEX)."""
    bits: int = 4
    """Weight bits: 4 or 8 for weight-only methods; 8 for dynamic/static."""
    group_size: int = 32
    """Weights per scale along the input dimension; -1 means one scale per output channel."""
    sym: bool = True
    """Symmetric (no zero point). 8-bit asymmetric weight-only is refused: INC 3.10 overflows in recover()."""
    calib_data: str | None = None
    """Data spec of calibration text (required for gptq/awq/static; also used by the sanity check)."""
    calib_samples: int = 32
    """Calibration sequences."""
    seq_len: int = 128
    """Tokens per calibration sequence."""
    tune: bool = False
    """Accuracy-driven search with INC autotune over a small grid of weight-only settings."""
    max_quality_drop: float = 0.01
    """With tune: accepted relative quality loss (accuracy may fall, perplexity may rise, by this fraction)."""
    eval_data: str | None = None
    """Data spec for tuning's quality metric (defaults to calib_data)."""
    label_column: str = "label"
    """Label column/field of eval_data for seq-cls tuning."""
    max_rel_error: float = 0.5
    """Sanity bound on ‖q−fp‖/‖fp‖ of the outputs on one calibration batch; beyond it nothing is written."""


@dataclass(kw_only=True)
class PruneConfig:
    """How to prune a model."""

    method: str = "magnitude"
    """magnitude (unstructured, zeros weights) or structured (removes heads and FFN channels)."""
    sparsity: float = 0.5
    """magnitude: share of zeroed weights among the pruned linear layers."""
    scope: str = "global"
    """magnitude: global (one threshold across layers) or layer (the same share in every layer)."""
    heads: float = 0.0
    """structured: share of attention heads (KV groups for GQA) removed in every layer."""
    ffn: float = 0.0
    """structured: share of FFN intermediate channels removed in every layer."""
    importance_data: str | None = None
    """structured: data spec for activation-based importance; None uses weight norms only."""
    importance_samples: int = 16
    """structured: sequences used to score importance."""
    seq_len: int = 128
    """Tokens per sequence for importance scoring and recovery."""
    recover_steps: int = 0
    """Fine-tuning steps after pruning (plain torch loop; the seam for distillation-based recovery)."""
    recover_data: str | None = None
    """Data spec for recovery fine-tuning (required when recover_steps > 0)."""
    recover_lr: float = 5e-5
    """Learning rate of the recovery loop."""
    label_column: str = "label"
    """Label column for seq-cls recovery data."""


@dataclass(kw_only=True)
class EvalConfig:
    """What to measure on a model."""

    task: str | None = None
    """clm, mlm or seq-cls; None takes it from the model's architecture."""
    data: str | None = None
    """Data spec; without it only size, parameters and speed are measured."""
    label_column: str = "label"
    """Label column/field for seq-cls."""
    max_samples: int = 64
    """Sequences (clm/mlm) or documents (seq-cls) evaluated."""
    seq_len: int = 128
    """Tokens per sequence, for quality and speed."""
    batch_size: int = 8
    """Batch size, for quality and speed."""
    warmup: int = 2
    """Untimed forward passes before timing (WOQ modules unpack their weights on the first call)."""
    runs: int = 5
    """Timed forward passes; the median is reported."""
    speed: bool = True
    """Measure latency and throughput."""
    seed: int = 0
    """Seed of the mlm masking, so runs compare the same masked positions."""


@dataclass(kw_only=True)
class Stage:
    """One step of a pipeline recipe."""

    kind: str
    """prune, distill or quantize."""
    options: dict = field(default_factory=dict)
    """Settings of that step (the fields of PruneConfig/QuantizeConfig, or the distiller's own)."""
