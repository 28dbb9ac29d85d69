"""Students for distillation: a teacher with fewer layers, initialised from the layers it keeps.

Works on any HF model whose blocks sit in one `nn.ModuleList` (BERT `encoder.layer`, GPT-2 `transformer.h`,
Llama `model.layers`, ...): the config is copied with fewer layers, the kept blocks' weights are renamed to
their new positions, and everything outside the blocks (embeddings, final norm, heads) is copied as is.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.compress.errors import CompressUserError
from scaling.files import apply_umask, copy_contained

STUDENT_FILE = "scaling_student.json"
"""Written into a reduced student's directory: where its layers came from."""


@dataclass(frozen=True)
class Reduction:
    """What a layer reduction did."""

    kept: list[int]
    """Teacher layer index of each student layer, in order."""
    teacher_layers: int
    """Blocks of the teacher."""
    layers_path: str
    """Dotted module path of the block list (e.g. `bert.encoder.layer`)."""
    parameters_before: int
    """Parameters of the teacher."""
    parameters_after: int
    """Parameters of the student."""


def default_kept_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced layers starting at the first: every other layer when halving (0, 2, 4 of 6)."""
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def check_kept_layers(kept: list[int], teacher_layers: int) -> None:
    """Reject selections that cannot describe a student of this teacher."""
    if not kept:
        raise CompressUserError("--student-layers must be at least 1")
    if len(kept) > teacher_layers:
        raise CompressUserError(
            f"--student-layers {len(kept)} is larger than the teacher, which has {teacher_layers} layers"
        )
    bad = [i for i in kept if not 0 <= i < teacher_layers]
    if bad:
        raise CompressUserError(
            f"--student-layer-map {','.join(map(str, kept))}: layer(s) {bad} do not exist "
            f"(the teacher has layers 0..{teacher_layers - 1})"
        )
    if len(set(kept)) != len(kept) or kept != sorted(kept):
        raise CompressUserError(
            f"--student-layer-map {','.join(map(str, kept))}: give distinct teacher layers in increasing order"
        )


def num_layers(config: Any) -> int:
    """Blocks of a model, from its HF config."""
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise CompressUserError(f"cannot tell the number of layers of a {type(config).__name__}")


def find_layer_list(model: Any, count: int) -> str:
    """Dotted path of the ModuleList holding the model's `count` blocks."""
    import torch

    found = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList)
        and len(module) == count
        and count > 0
        and len({type(child) for child in module}) == 1
    ]
    if len(found) != 1:
        raise CompressUserError(
            f"{type(model).__name__}: cannot find its list of {count} layers "
            f"(candidates: {found or 'none'}); layer reduction supports models with one block list"
        )
    return found[0]


def reduced_config(config: Any, kept: list[int]) -> Any:
    """A copy of `config` with only the kept layers; per-layer lists (e.g. `layer_types`) follow them."""
    import copy

    teacher_layers = num_layers(config)
    student = copy.deepcopy(config)
    student.num_hidden_layers = len(kept)  # GPT-2 maps this name to n_layer
    for key, value in config.to_dict().items():
        if isinstance(value, list) and len(value) == teacher_layers and key != "architectures":
            setattr(student, key, [value[i] for i in kept])
    return student


def reduce_layers(teacher: Any, kept: list[int]) -> tuple[Any, Reduction]:
    """A new model of the teacher's class with only the `kept` blocks, weights copied from the teacher."""
    teacher_layers = num_layers(teacher.config)
    check_kept_layers(kept, teacher_layers)
    prefix = find_layer_list(teacher, teacher_layers)
    config = reduced_config(teacher.config, kept)
    student = type(teacher)(config).to(next(teacher.parameters()).dtype)
    new_index = {old: new for new, old in enumerate(kept)}
    state = {}
    head = prefix + "."
    for key, tensor in teacher.state_dict().items():
        if key.startswith(head):
            layer, _, rest = key[len(head) :].partition(".")
            if int(layer) not in new_index:
                continue
            key = f"{head}{new_index[int(layer)]}.{rest}"
        state[key] = tensor
    student.load_state_dict(state, strict=True)
    return student, Reduction(
        kept=list(kept),
        teacher_layers=teacher_layers,
        layers_path=prefix,
        parameters_before=sum(p.numel() for p in teacher.parameters()),
        parameters_after=sum(p.numel() for p in student.parameters()),
    )


def write_reduced_student(
    teacher_dir: Path, output: Path, *, student_layers: int, kept: list[int] | None = None, task: str
) -> Reduction:
    """Save a layer-reduced copy of the teacher at `output` (HF directory + the teacher's tokenizer).

    The directory appears complete or not at all (assembled beside it, then renamed)."""
    import torch
    from transformers import AutoConfig

    from scaling.models import model_class_for

    config = AutoConfig.from_pretrained(teacher_dir, local_files_only=True)
    teacher_layers = num_layers(config)
    if student_layers > teacher_layers:
        raise CompressUserError(
            f"--student-layers {student_layers} is larger than the teacher, which has {teacher_layers} layers"
        )
    kept = list(kept) if kept is not None else default_kept_layers(teacher_layers, student_layers)
    if len(kept) != student_layers:
        raise CompressUserError(
            f"--student-layer-map names {len(kept)} layers but --student-layers is {student_layers}"
        )
    check_kept_layers(kept, teacher_layers)
    teacher = model_class_for(task).from_pretrained(teacher_dir, local_files_only=True, dtype=torch.float32)
    student, reduction = reduce_layers(teacher, kept)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        student.save_pretrained(staging)
        for name in _tokenizer_files(teacher_dir):
            copy_contained(teacher_dir / name, staging / name, teacher_dir)
        record = {"teacher": str(teacher_dir), **reduction.__dict__}
        (staging / STUDENT_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        apply_umask(staging)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return reduction


def _tokenizer_files(directory: Path) -> list[str]:
    names = (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.model",
        "spiece.model",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
    )
    return [n for n in names if (Path(directory) / n).is_file()]
