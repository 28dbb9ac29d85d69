"""The data pipeline's own configuration section."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(kw_only=True)
class DataConfig:
    """Where training and eval text comes from and how it becomes batches."""

    train: list[str] = field(default_factory=list)
    """Source specs, e.g. `corpus/*.jsonl:text@0.7` (path or glob, optional field/column, optional weight)."""
    eval: list[str] = field(default_factory=list)
    """Held-out source specs; evaluation is skipped when empty."""
    seq_len: int = 128
    """Tokens per training sequence (packed block length for clm/mlm, max length for seq-cls)."""
    label_column: str = "label"
    """Column (CSV/TSV) or field (JSONL) holding the class label for seq-cls."""
    packing: bool = True
    """Concatenate documents into full seq_len blocks (clm/mlm) instead of padding each one."""
    cross_doc_attention: bool = True
    """When packing, let tokens attend across document boundaries (False: restart positions, block attention)."""
    mlm_probability: float = 0.15
    """Share of tokens selected for masking in mlm."""
