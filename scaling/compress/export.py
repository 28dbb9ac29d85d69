"""`scaling compress export Q --output DIR`: a quantized output as a plain transformers model directory.

INC's weight-only format (quantized_weight.pt + qconfig.json) loads only through INC on the original
architecture; plain `from_pretrained` finds no model.safetensors. The export holds the weights the quantized
model actually computes with (each INC layer's dequantized weight, AWQ input scales folded in), so its outputs
equal the quantized model's and anything that reads HF directories can run it. On CPU that costs nothing at
inference (INC dequantizes on its first forward anyway); the files are float again, so keep the INC output
for storage and this for use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scaling.compress import inc, verify
from scaling.compress.errors import CompressionFailed, CompressUserError
from scaling.compress.feed import main_output
from scaling.compress.model_io import (
    FORMAT_HF,
    FORMAT_PT2E,
    FORMAT_WOQ,
    atomic_output,
    copy_tokenizer,
    load_compressed,
    model_class,
    write_manifest,
)

MAX_ABS_DIFF = 1e-4
"""Largest output difference between the export and the quantized model it came from."""


def plain_state(model: Any) -> dict[str, Any]:
    """The quantized model's state as float tensors under the names a plain model of its architecture uses."""
    layers = inc.dequantized_linears(model)
    state: dict[str, Any] = {}
    for name, (weight, bias) in layers.items():
        state[f"{name}.weight"] = weight
        if bias is not None:
            state[f"{name}.bias"] = bias.float()
    for key, tensor in model.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if not any(owner == n or owner.startswith(f"{n}.") for n in layers):
            state[key] = tensor
    return state


def export_plain(source: str | Path, output: Path, overwrite: bool = False) -> dict[str, Any]:
    """Write `source` (one of our weight-only quantized outputs) to `output` as an HF model directory."""
    import torch

    from scaling.compat.transformers import model_from_config

    loaded = load_compressed(source)
    if loaded.format == FORMAT_HF:
        raise CompressUserError(f"{source} is already a plain HF model directory; nothing to export")
    if loaded.format == FORMAT_PT2E:
        raise CompressUserError(
            f"{source} is a PT2E int8 program (--method dynamic/static), not weights on an HF architecture; "
            "it runs only through torch.export with INC's loader (scaling.compress.model_io.load_compressed). "
            "Export a weight-only output (rtn, gptq, awq) instead"
        )
    assert loaded.format == FORMAT_WOQ
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(source))  # as saved: INC may have changed the loaded model's
    fresh = model_from_config(model_class(config), config, dtype=torch.float32).eval()
    state = plain_state(loaded.model)
    from transformers.pytorch_utils import Conv1D

    # GPT-2's Conv1D stores [in, out]; quantization ran on the Linear form ([out, in]) of the same layer.
    conv1d = {f"{name}.weight" for name, m in fresh.named_modules() if isinstance(m, Conv1D)}
    filled = {}
    for key, target in fresh.state_dict().items():
        if key not in state:
            raise CompressionFailed(f"{source}: the quantized model has no tensor for {key}; nothing written")
        tensor = state[key].to(target.dtype)
        if key in conv1d and loaded.manifest.get("conv1d_to_linear"):
            tensor = tensor.t()
        if tensor.shape != target.shape:
            raise CompressionFailed(
                f"{source}: {key} has shape {tuple(tensor.shape)}, the architecture {tuple(target.shape)}"
            )
        filled[key] = tensor.contiguous()
    fresh.load_state_dict(filled, strict=True)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, int(config.vocab_size), (2, 16), generator=gen)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        diff = float((main_output(fresh, ids, mask) - main_output(loaded.model, ids, mask)).abs().max())
    if not diff <= MAX_ABS_DIFF:
        raise CompressionFailed(
            f"the exported model's outputs differ from the quantized model's by {diff:.2e}; nothing written"
        )
    manifest = {
        "kind": "export",
        "format": FORMAT_HF,
        "task": loaded.task,
        "source": str(source),
        "method": loaded.manifest.get("method"),
        "quantized": {k: loaded.manifest.get(k) for k in ("method", "settings", "format")},
        "results": {"max_abs_diff_to_quantized": diff},
    }
    with atomic_output(output, overwrite) as out:
        fresh.save_pretrained(str(out))
        copy_tokenizer(Path(source), out, loaded.tokenizer)
        verify.record(fresh, ids, mask, out)
        write_manifest(out, manifest)
    return manifest
