"""Layer reduction: a smaller HF directory that plain transformers loads, holding the chosen teacher layers."""

from __future__ import annotations

import json

import pytest
import torch
from ranks_distill import make_model
from safetensors.torch import load_file

from scaling.compress.errors import CompressUserError
from scaling.compress.student import STUDENT_FILE, default_kept_layers, write_reduced_student

# (kind, task, the block list's key prefix in the state dict)
CASES = [
    ("bert", "seq-cls", "bert.encoder.layer"),
    ("bert", "mlm", "bert.encoder.layer"),
    ("gpt2", "clm", "transformer.h"),
    ("llama", "clm", "model.layers"),
]


def test_default_keeps_every_other_layer():
    assert default_kept_layers(6, 3) == [0, 2, 4]
    assert default_kept_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    assert default_kept_layers(4, 1) == [0]
    assert default_kept_layers(4, 4) == [0, 1, 2, 3]


@pytest.mark.parametrize(("kind", "task", "prefix"), CASES)
@pytest.mark.parametrize("kept", [None, [1, 3]])
def test_reduced_student_loads_in_transformers_with_the_teachers_layers(
    tmp_path, clm_tokenizer, kind, task, prefix, kept
):
    from transformers import AutoConfig, AutoModel

    from scaling.models import model_class_for

    teacher_dir = make_model(kind, task, clm_tokenizer, tmp_path / "teacher", layers=4)
    out = tmp_path / "student"
    reduction = write_reduced_student(teacher_dir, out, student_layers=2, kept=kept, task=task)
    chosen = kept or [0, 2]
    assert reduction.kept == chosen and reduction.teacher_layers == 4
    assert reduction.parameters_after < reduction.parameters_before
    config = AutoConfig.from_pretrained(out)
    assert config.num_hidden_layers == 2
    assert json.loads((out / STUDENT_FILE).read_text())["kept"] == chosen
    assert (out / "tokenizer.json").is_file()

    teacher = load_file(teacher_dir / "model.safetensors")
    student = load_file(out / "model.safetensors")
    for new, old in enumerate(chosen):
        block = {
            k[len(f"{prefix}.{new}.") :]: v for k, v in student.items() if k.startswith(f"{prefix}.{new}.")
        }
        assert block, f"no weights for student layer {new}"
        for rest, tensor in block.items():
            assert torch.equal(tensor, teacher[f"{prefix}.{old}.{rest}"]), rest
    outside = [k for k in student if not k.startswith(prefix + ".")]
    assert outside and all(torch.equal(student[k], teacher[k]) for k in outside)

    # Plain transformers: the task class and the bare backbone both load it with no missing weights.
    model, info = model_class_for(task).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    AutoModel.from_pretrained(out)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_keeping_every_layer_reproduces_the_teacher(tmp_path, clm_tokenizer):
    """Keeping both layers of a 2-layer teacher gives the teacher's exact outputs."""
    from transformers import AutoModelForCausalLM

    teacher_dir = make_model("llama", "clm", clm_tokenizer, tmp_path / "teacher", layers=2)
    write_reduced_student(teacher_dir, tmp_path / "s", student_layers=2, task="clm")
    ids = torch.tensor([[3, 9, 27, 81, 5]])
    t = AutoModelForCausalLM.from_pretrained(teacher_dir)(input_ids=ids).logits
    s = AutoModelForCausalLM.from_pretrained(tmp_path / "s")(input_ids=ids).logits
    assert torch.equal(t, s)


def test_bad_selections_are_user_errors(tmp_path, clm_tokenizer):
    teacher_dir = make_model("gpt2", "clm", clm_tokenizer, tmp_path / "teacher", layers=4)
    with pytest.raises(CompressUserError, match="larger than the teacher, which has 4 layers"):
        write_reduced_student(teacher_dir, tmp_path / "a", student_layers=5, task="clm")
    with pytest.raises(CompressUserError, match="do not exist"):
        write_reduced_student(teacher_dir, tmp_path / "b", student_layers=2, kept=[0, 4], task="clm")
    with pytest.raises(CompressUserError, match="increasing order"):
        write_reduced_student(teacher_dir, tmp_path / "c", student_layers=2, kept=[2, 1], task="clm")
    with pytest.raises(CompressUserError, match="names 1 layers"):
        write_reduced_student(teacher_dir, tmp_path / "d", student_layers=2, kept=[1], task="clm")
    assert not [p for p in tmp_path.iterdir() if p.name != "teacher"]
