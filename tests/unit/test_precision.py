"""fp16 logic that CPU can check: config resolution and where the loss scale is read for checkpoints."""

from types import SimpleNamespace

from scaling.config.deepspeed import RunValues, resolve_deepspeed
from scaling.engine.step_window import loss_scale


def test_fp16_resolution_enables_dynamic_loss_scaling():
    resolved = resolve_deepspeed("zero2", [], RunValues(precision="fp16", explicit=frozenset({"precision"})))
    assert resolved.config["fp16"]["enabled"] is True
    assert resolved.config["bf16"]["enabled"] is False
    assert resolved.config["fp16"]["loss_scale"] == 0  # 0 = dynamic
    assert resolved.sources["fp16.enabled"].startswith("option --precision")


def test_loss_scale_is_read_from_either_optimizer_flavour():
    assert loss_scale(SimpleNamespace(optimizer=SimpleNamespace(cur_scale=1024.0))) == 1024.0
    assert loss_scale(SimpleNamespace(optimizer=SimpleNamespace(loss_scale=512))) == 512.0
    assert loss_scale(SimpleNamespace(optimizer=SimpleNamespace())) is None
