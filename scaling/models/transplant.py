"""Move a pretrained model to another tokenizer without throwing away what its embeddings know.

A plan says, for every id of the new vocabulary, which rows of the old embedding make its row: the same token
(same string, same text) copies its old row; any other token gets the mean of the old rows of the pieces the
*old* tokenizer splits its text into; a special token takes its old counterpart of the same role (eos, bos,
pad, unk, ...), else the mean of all old rows. The plan needs only the two tokenizers, so it is made once,
written down, and applied on every rank to the same old rows (gathered first under ZeRO-3).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaling.errors import UserError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PLAN_FILE = "embedding_transplant.json"
KINDS = ("copied", "composed", "role", "mean", "random")
"""How a new row is made: copied (same token), composed (mean of its old pieces), role (the special token of
the same role), mean (mean of all old rows: a special token without counterpart), random (nothing to go by)."""
ROLES = ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token", "cls_token", "sep_token")
_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@dataclass(frozen=True)
class TransplantPlan:
    """For each new id, how its row is made and from which old ids."""

    kinds: list[str]
    sources: list[list[int]]
    old_rows: int
    """Rows of the old embedding matrix the plan indexes (at least the old tokenizer's length)."""

    @property
    def counts(self) -> dict[str, int]:
        found = Counter(self.kinds)
        return {kind: found.get(kind, 0) for kind in KINDS}

    def summary(self) -> str:
        c = self.counts
        return (
            f"{len(self.kinds)} rows: {c['copied']} copied, {c['composed']} composed from old pieces, "
            f"{c['role']} special by role, {c['mean']} mean row, {c['random']} left random"
        )

    def to_json(self) -> str:
        return json.dumps({"old_rows": self.old_rows, "kinds": self.kinds, "sources": self.sources})

    @classmethod
    def load(cls, path: str | Path) -> TransplantPlan:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(kinds=data["kinds"], sources=data["sources"], old_rows=data["old_rows"])


def _byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in type(backend.decoder).__name__


def plan_transplant(
    old: PreTrainedTokenizerBase, new: PreTrainedTokenizerBase, *, old_rows: int | None = None
) -> TransplantPlan:
    """The plan that moves rows of a model trained with `old` to the vocabulary of `new`."""
    old_vocab = old.get_vocab()
    rows = old_rows or len(old)  # a tokenizer may name more ids than the embedding has rows
    kinds: list[str] = []
    sources: list[list[int]] = []
    role_of = {}
    for role in ROLES:
        new_id = getattr(new, f"{role}_id", None)
        old_id = getattr(old, f"{role}_id", None)
        if new_id is not None and new_id not in role_of:
            role_of[new_id] = old_id
    specials = set(new.all_special_ids) | {i for i, t in new.added_tokens_decoder.items() if t.special}
    byte_chars = _byte_chars() if _byte_level(old) else None
    new_tokens = new.convert_ids_to_tokens(list(range(len(new))))
    texts: list[str] = []
    pending: list[int] = []
    for new_id, token in enumerate(new_tokens):
        kinds.append("random")
        sources.append([])
        if new_id in specials:
            old_id = role_of.get(new_id)
            if old_id is None and token in old_vocab:
                old_id = old_vocab[token]
            kinds[new_id], sources[new_id] = ("role", [old_id]) if old_id is not None else ("mean", [])
            continue
        byte = _BYTE.match(token or "")
        value = int(byte.group(1), 16) if byte else None
        if value is not None and value < 0x80:
            # An ASCII byte is a character: the old tokenizer's row for it, not its (rarely trained) byte row.
            texts.append(chr(value))
            pending.append(new_id)
            continue
        if value is not None:
            if token in old_vocab:
                kinds[new_id], sources[new_id] = "copied", [old_vocab[token]]
            elif byte_chars is not None and byte_chars[value] in old_vocab:
                kinds[new_id], sources[new_id] = "composed", [old_vocab[byte_chars[value]]]
            continue
        text = new.convert_tokens_to_string([token])
        if token in old_vocab and old.convert_tokens_to_string([token]) == text:
            kinds[new_id], sources[new_id] = "copied", [old_vocab[token]]
        elif text:
            texts.append(text)
            pending.append(new_id)
    if texts:
        for new_id, ids in zip(pending, old(texts, add_special_tokens=False)["input_ids"], strict=True):
            ids = [i for i in ids if i != old.unk_token_id and i < rows]
            if ids:
                kinds[new_id], sources[new_id] = "composed", ids
    for new_id, ids in enumerate(sources):
        if any(i is None or i >= rows for i in ids):
            sources[new_id] = []
            kinds[new_id] = "mean" if kinds[new_id] == "role" else "random"
    return TransplantPlan(kinds=kinds, sources=sources, old_rows=rows)


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte-level alphabet: the character a byte-level BPE writes for each byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def random_plan(new_size: int, old_rows: int) -> TransplantPlan:
    """`--embedding-init random`: every row of the new vocabulary drawn afresh."""
    return TransplantPlan(
        kinds=["random"] * new_size, sources=[[] for _ in range(new_size)], old_rows=old_rows
    )


def compose_rows(old: torch.Tensor, plan: TransplantPlan, *, std: float, seed: int) -> torch.Tensor:
    """The new matrix (or bias vector) from the old one, row by row as the plan says. Random rows come from a
    seeded generator, so every rank makes the same ones; a random bias entry is 0."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    shape = (len(plan.kinds), *old.shape[1:])
    source = old.detach().float()
    mean = source.mean(dim=0)
    out = torch.zeros(shape, dtype=torch.float32)
    for new_id, (kind, ids) in enumerate(zip(plan.kinds, plan.sources, strict=True)):
        if kind == "mean":
            out[new_id] = mean
        elif kind == "random":
            if old.dim() > 1:
                out[new_id] = torch.randn(shape[1:], generator=gen) * std
        else:
            out[new_id] = source[ids].mean(dim=0)
    return out.to(old.dtype)


@contextmanager
def _gathered(params: list[Any], modifier_rank: int | None = None) -> Iterator[None]:
    """Whole parameters for the block (ZeRO-3 partitions them; elsewhere they already are)."""
    if not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def apply_transplant(model: PreTrainedModel, plan: TransplantPlan, *, seed: int) -> None:
    """Resize `model` to the plan's vocabulary and fill its input (and untied output) embedding rows.

    Under ZeRO-3 the partitioned weights are gathered to read the old rows and written back from rank 0."""
    inputs: Any = input_embeddings(model)
    std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
    outputs: Any = model.get_output_embeddings()
    # transformers ties by sharing one Parameter, partitioned or not.
    tied = outputs is None or outputs.weight is inputs.weight
    old_params = [inputs.weight] + ([] if tied or outputs is None else [outputs.weight])
    bias = getattr(outputs, "bias", None) if outputs is not None else None
    if bias is not None and bias.dim() == 1 and _rows(bias) == _rows(inputs.weight):
        old_params.append(bias)
    else:
        bias = None
    with _gathered(old_params):
        new = [compose_rows(p, plan, std=std, seed=seed + i) for i, p in enumerate(old_params)]
    model.resize_token_embeddings(len(plan.kinds), mean_resizing=False)
    inputs = model.get_input_embeddings()
    outputs = model.get_output_embeddings()
    targets = [inputs.weight] + ([] if tied or outputs is None else [outputs.weight])
    if bias is not None:
        targets.append(outputs.bias)
    import torch

    with _gathered(targets, modifier_rank=0), torch.no_grad():
        for target, rows in zip(targets, new, strict=True):
            target.data.copy_(rows.to(target.dtype))
    model.config.vocab_size = len(plan.kinds)


def _rows(param: Any) -> int:
    return int(getattr(param, "ds_shape", param.shape)[0])  # ZeRO-3 leaves an empty local tensor


def input_embeddings(model: Any) -> Any:
    """The model's input embedding module; a model without one cannot change its vocabulary (UserError)."""
    try:
        inputs = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        inputs = None
    if inputs is None or not hasattr(inputs, "weight"):
        raise UserError(
            f"model {type(model).__name__} has no input embeddings: it cannot be moved to another tokenizer"
        )
    return inputs


def _same_vocabulary(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab()


def plan_for_model(source: str, tokenizer: Any, *, init: str) -> TransplantPlan | None:
    """The plan that moves the pretrained model `source` to `tokenizer`, or None when nothing moves: the
    model has no weights, no tokenizer of its own to compare with, or the same vocabulary."""
    from scaling.data.tokenizer import has_tokenizer, load_tokenizer
    from scaling.models.load import describe_source, hf_config_for

    described = describe_source(source)
    if not described.has_weights or not has_tokenizer(source):
        return None
    old = load_tokenizer(source)
    if _same_vocabulary(old, tokenizer):
        return None
    old_rows = int(getattr(hf_config_for(described), "vocab_size", 0) or 0)
    if init == "random":
        return random_plan(len(tokenizer), max(old_rows, len(old)))
    return plan_transplant(old, tokenizer, old_rows=old_rows)


def record(plan: TransplantPlan, init: str) -> dict[str, Any]:
    """What run_config.json and `explain` say about a move: the init and how many rows each way."""
    return {"init": init, "plan": PLAN_FILE, "rows": len(plan.kinds), **plan.counts}


def transplant_directory(
    model_dir: str | Path, tokenizer: Any, output: str | Path, *, init: str = "transplant", seed: int = 0
) -> TransplantPlan:
    """Write `model_dir` moved to `tokenizer` as a plain HF model directory (weights, config, tokenizer)."""
    import shutil
    import tempfile

    import torch
    import transformers

    from scaling.data.tokenizer import has_tokenizer
    from scaling.models.load import describe_source, hf_config_for

    source = describe_source(str(model_dir))
    if not source.has_weights:
        raise UserError(f"model {model_dir}: no weights to move to another tokenizer")
    config = hf_config_for(source)
    arch = (getattr(config, "architectures", None) or [""])[0]
    cls = getattr(transformers, arch, None) or transformers.AutoModel
    with torch.device(
        "meta"
    ):  # its shape only: a model that cannot move is refused before any weight is read
        input_embeddings(cls.from_config(config) if cls is transformers.AutoModel else cls(config))
    if not has_tokenizer(model_dir):
        raise UserError(f"model {model_dir}: has no tokenizer of its own, so its rows cannot be mapped")
    model = cls.from_pretrained(str(model_dir), local_files_only=True, dtype=torch.float32)
    plan = plan_for_model(str(model_dir), tokenizer, init=init)
    if plan is None:  # the same vocabulary: rows are kept (or redrawn)
        old_rows = int(input_embeddings(model).weight.shape[0])
        plan = (
            random_plan(len(tokenizer), old_rows)
            if init == "random"
            else plan_transplant(tokenizer, tokenizer, old_rows=old_rows)
        )
    apply_transplant(model, plan, seed=seed)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            setattr(model.config, name, value)
            if getattr(model, "generation_config", None) is not None:
                setattr(model.generation_config, name, value)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".transplant-", dir=out.parent))
    try:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return plan
