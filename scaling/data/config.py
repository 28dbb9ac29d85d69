"""The data pipeline's own configuration section."""

from __future__ import annotations

from dataclasses import dataclass, field

MIX_MODES = ("static", "dynamic")


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
    mix_temperature: float = 1.0
    """Sampling temperature T over sources: p_i ∝ n_i^(1/T) (n_i: explicit weight, else source size in bytes)."""
    mix: str = "static"
    """static: fixed weights; dynamic: weights follow each source's recent eval loss (see maybe_adapt)."""
    mix_update_every: int = 100
    """Optimizer steps between two dynamic weight updates."""
    mix_eval_batches: int = 2
    """Micro-batches per source evaluated at each dynamic update (same number on every rank)."""
    mix_step_size: float = 1.0
    """How strongly a source's excess loss raises its weight: p_i ∝ p0_i * exp(step_size * (loss_i - mean))."""
    mix_max_ratio: float = 4.0
    """Dynamic weights stay within [p0_i / ratio, p0_i * ratio] of their initial value (before renormalising)."""
    augment: str = ""
    """Comma-separated augmentation ops `name:rate`: delete, swap, insert, synonym (text, any task); wwm, span (mlm)."""
    synonyms: str | None = None
    """Synonym table for `synonym`/`insert`: one line per word, `word<TAB>syn1,syn2` or `word syn1 syn2`."""
    max_doc_chars: int = 1_000_000
    """Longer documents (or lines) are split into pieces of this many characters, bounding memory."""
    chunk_docs: int = 1024
    """Documents read and tokenized together: the unit of batching, shuffling and of resume replay."""
    chunk_chars: int = 4_000_000
    """Character budget of one chunk; with chunk_docs it bounds the pipeline's memory."""
    prefetch: bool = True
    """Tokenize the next chunk on a background thread while the model trains on this one (same batches)."""
