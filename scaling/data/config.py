"""The data pipeline's own configuration section."""

from __future__ import annotations

from dataclasses import dataclass

from scaling.config.fields import option

MIX_MODES = ("static", "dynamic")


@dataclass(kw_only=True)
class DataConfig:
    """Where training and eval text comes from and how it becomes batches."""

    train: list[str] = option(default_factory=list, flag="--data", param="data", metavar="SPEC")
    """Training source: [hf:]PATH|GLOB|DIR[:field|:line|:paragraph|:file][@weight], e.g.
    `corpus/*.jsonl:text@0.7`; repeat to mix sources. For --task sft the part after ':' names the conversation
    format (messages, alpaca, sharegpt), for --task dpo the pair format (pairs, messages); default: detected
    per record. A directory written by `scaling preprocess` is read as
    packed tokens."""
    eval: list[str] = option(default_factory=list, flag="--eval-data", param="eval_data", metavar="SPEC")
    """Held-out source spec (repeatable); evaluation is skipped without one."""
    seq_len: int = option(128, min=8)
    """Tokens per training sequence (packed block length for clm/mlm, max length for seq-cls)."""
    train_on_prompt: bool = option(False)
    """sft: make the prompt turns (system, user) training targets too, not only the assistant turns."""
    label_column: str = option("label")
    """Column (CSV/TSV) or field (JSONL) holding the class label for seq-cls."""
    packing: bool = option(True)
    """Concatenate documents into full seq_len blocks (clm/mlm) instead of padding each one."""
    cross_doc_attention: bool = option(True)
    """When packing, let tokens attend across document boundaries (--no-cross-doc-attention: restart
    positions, block attention)."""
    mlm_probability: float = option(0.15, min=0.0, max=1.0, min_open=True, max_open=True)
    """Share of tokens selected for masking in mlm."""
    mix_temperature: float = option(1.0, min=0.0, min_open=True)
    """Sampling temperature T over sources: p_i ∝ n_i^(1/T) (n_i: explicit weight, else source size in bytes)."""
    mix: str = option("static", choices=MIX_MODES)
    """static: fixed weights; dynamic: weights follow each source's recent eval loss."""
    mix_update_every: int = option(100, min=1)
    """Optimizer steps between two dynamic weight updates."""
    mix_eval_batches: int = option(2, min=1)
    """Micro-batches per source evaluated at each dynamic update (same number on every rank)."""
    mix_step_size: float = 1.0
    """How strongly a source's excess loss raises its weight: p_i ∝ p0_i * exp(step_size * (loss_i - mean))."""
    mix_max_ratio: float = option(4.0, min=1.0)
    """Dynamic weights stay within [p0_i / ratio, p0_i * ratio] of their initial value (before renormalising)."""
    augment: str = option("", metavar="OPS")
    """Comma-separated augmentation ops `name:rate`: delete, swap, insert, synonym (text, any task); wwm, span
    (mlm); e.g. 'delete:0.1,swap:0.05'."""
    synonyms: str | None = option(None, path="file")
    """Synonym table for `synonym`/`insert`: one line per word, `word<TAB>syn1,syn2` or `word syn1 syn2`."""
    max_doc_chars: int = option(1_000_000, min=1000)
    """Longer documents (or lines) are split into pieces of this many characters, bounding memory."""
    encoding: str = option("utf-8", metavar="CODEC")
    """Encoding of text, JSONL and CSV/TSV sources (a Python codec that keeps ASCII as is: utf-8, latin-1,
    cp1252, ...). Bytes that do not decode are replaced by U+FFFD and count as bad records."""
    max_bad_fraction: float = option(0.01, min=0.0, max=1.0)
    """Share of a file's records that may be bad (undecodable bytes, malformed JSON, CSV rows without the
    needed columns or merged by a stray quote, labels that are not integers) before the run stops naming the
    file and the first bad record; below it, a one-line notice."""
    max_record_bytes: int = option(16 * 2**20, min=1024)
    """Largest JSONL line or CSV/TSV line read whole (text lines are read in pieces of --max-doc-chars); a
    longer one stops the run naming its file and line, so one huge record cannot exhaust memory."""
    chunk_docs: int = 1024
    """Documents read and tokenized together: the unit of batching, shuffling and of resume replay."""
    chunk_chars: int = 4_000_000
    """Character budget of one chunk; with chunk_docs it bounds the pipeline's memory."""
    prefetch: bool = True
    """Tokenize the next chunk on a background thread while the model trains on this one (same batches)."""
