"""Drift: the schema of DeepSpeed's pydantic-modelled sections is DeepSpeed's own, for the installed release."""

from __future__ import annotations

import json

from scaling.config import deepspeed_models
from scaling.config.keys import canonical_path, top_spec
from scaling.config.schema import check_schema


def test_snapshot_matches_the_installed_deepspeed_models() -> None:
    live = json.loads(json.dumps(deepspeed_models.derive()))
    snapshot = json.loads(deepspeed_models.SNAPSHOT.read_text(encoding="utf-8"))
    assert snapshot == live, "regenerate: python -m scaling.config.deepspeed_models"


def test_every_model_field_and_alias_is_a_schema_key() -> None:
    top = top_spec()
    for section, fields in deepspeed_models.model_fields_spec().items():
        children = top[section].children
        assert children is not None
        for name, spec in fields.items():
            assert name in children
            if "alias" in spec:
                assert children[spec["alias"]].canonical == name


def test_field_names_without_the_stage3_prefix_are_accepted_and_fold_to_one_key() -> None:
    zero = {"stage": 3, "max_live_parameters": 10, "stage3_max_reuse_distance": 10, "sub_group_size": 0}
    problems, notes = check_schema({"zero_optimization": zero})
    assert problems == [] and notes == []
    assert (
        canonical_path("zero_optimization.stage3_max_reuse_distance")
        == "zero_optimization.max_reuse_distance"
    )


def test_deprecated_name_is_accepted_with_the_new_name_in_a_notice() -> None:
    problems, notes = check_schema({"zero_optimization": {"stage3_gather_fp16_weights_on_model_save": True}})
    assert problems == []
    assert "use zero_optimization.gather_16bit_weights_on_model_save" in notes[0].render()


def test_bounds_come_from_the_models() -> None:
    problems, _ = check_schema({"zero_optimization": {"reduce_bucket_size": 0}})  # gt=0
    assert [p.path for p in problems] == ["zero_optimization.reduce_bucket_size"]
    problems, _ = check_schema({"zero_optimization": {"offload_optimizer": {"ratio": 1.5}}})  # le=1
    assert "must be <= 1" in problems[0].render()


def test_another_deepspeed_version_is_derived_live(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    live = json.loads(json.dumps(deepspeed_models.derive()["sections"]))
    monkeypatch.setattr(deepspeed_models, "installed_version", lambda: "0.0.0-other")
    deepspeed_models.clear_cache()
    try:
        assert json.loads(json.dumps(deepspeed_models.model_fields_spec())) == live
    finally:
        monkeypatch.undo()
        deepspeed_models.clear_cache()
