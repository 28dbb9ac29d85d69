"""The only module that imports neural_compressor, always inside functions (`scaling --help` stays fast).

Every workaround for INC 3.10 on CPU (see the team's measurements in shared/notes/inc-on-cpu.md) lives here:
`use_layer_wise=False`, a local `model_path` for GPTQ, a tensor (not tuple) `example_inputs` for AWQ,
GPT-2 Conv1D -> Linear, a forward pass between prepare and convert for PT2E dynamic, and the torchao patch
that lets BERT through PT2E annotation.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from scaling.compat.safe_load import load_weights_only, refuse_unsafe_pt2, restricted_torch_load
from scaling.compress.errors import MissingPackageError, UnsupportedError

INSTALL_HINT = "install it with: pip install 'scaling[compress]' (neural-compressor and neural-compressor-pt)"
WEIGHT_FILE = "quantized_weight.pt"
"""INC's weight file name (both WOQ and PT2E formats)."""


def api() -> Any:
    """`neural_compressor.torch.quantization`, or a clear error when INC is not installed."""
    try:
        import neural_compressor.torch.quantization as q
    except ImportError as exc:
        raise MissingPackageError(
            f"quantization needs Intel Neural Compressor ({exc}); {INSTALL_HINT}"
        ) from None
    if "LOGLEVEL" not in os.environ:
        # INC logs every layer at INFO; keep our command output readable unless asked (LOGLEVEL=INFO).
        logging.getLogger("neural_compressor").setLevel(logging.ERROR)
    return q


def require_ipex(method: str) -> None:
    """SmoothQuant (and IPEX static) exist in INC only through intel_extension_for_pytorch."""
    if importlib.util.find_spec("intel_extension_for_pytorch") is None:
        raise MissingPackageError(
            f"{method} needs intel_extension_for_pytorch (IPEX) built for this torch version and an Intel CPU; "
            "IPEX is not installed (its latest release, 2.8, requires torch 2.8). "
            "Use --method static (PT2E int8) or a weight-only method instead"
        )
    try:
        import intel_extension_for_pytorch  # noqa: F401
    except Exception as exc:  # IPEX raises various errors when torch does not match
        raise MissingPackageError(
            f"{method} needs intel_extension_for_pytorch, which fails to import: {exc}"
        ) from None
    raise UnsupportedError(f"{method}: IPEX imports, but the IPEX path is not wired up in scaling yet")


def conv1d_to_linear(model: Any) -> int:
    """Replace HF Conv1D (GPT-2) by equivalent nn.Linear; INC's WOQ loader only rebuilds nn.Linear, and
    would otherwise silently hand back the fp32 model. Returns how many were replaced."""
    import torch
    from transformers.pytorch_utils import Conv1D

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                in_f, out_f = child.weight.shape
                linear = torch.nn.Linear(in_f, out_f, bias=child.bias is not None)
                linear.weight.data = child.weight.data.t().contiguous()
                if child.bias is not None:
                    linear.bias.data = child.bias.data.clone()
                setattr(parent, name, linear)
                count += 1
    return count


def woq_config(method: str, bits: int, group_size: int, sym: bool, work_dir: Path, skip: list[str]) -> Any:
    q = api()
    # use_layer_wise=False: the default True warns and falls back; GPTQ reads model_path even when not
    # layer-wise and calls snapshot_download("") without an existing directory.
    common = dict(bits=bits, group_size=group_size, use_sym=sym, use_layer_wise=False)
    if method == "rtn":
        cfg = q.RTNConfig(**common)
    elif method == "gptq":
        cfg = q.GPTQConfig(**common, model_path=str(work_dir))
    elif method == "awq":
        cfg = q.AWQConfig(bits=bits, group_size=group_size, use_sym=sym)
    else:
        raise UnsupportedError(f"not a weight-only method: {method}")
    extra: dict[str, Any] = {"use_layer_wise": False} if method != "awq" else {}
    if method == "gptq":
        extra["model_path"] = str(work_dir)
    for name in skip:
        # Output embeddings stay float: INC only recognises modules named lm_head, and BERT's tied MLM
        # decoder would otherwise be quantized, untying it from the embeddings.
        cfg.set_local(re.escape(name) + "$", type(cfg)(dtype="fp32", **extra))
    return cfg


def quantize_woq(
    model: Any, config: Any, method: str, calibrate: Callable[[Any], None] | None, example: Any
) -> Any:
    """Weight-only quantization; `calibrate(model)` runs forwards for GPTQ/AWQ."""
    q = api()
    if method == "gptq":
        require_accelerate()
    with _quiet_tracing():
        if method == "rtn":
            return q.quantize(model, config)
        # AWQ traces with example_inputs and needs a Tensor, not a tuple.
        prepared = (
            q.prepare(model, config, example_inputs=example) if method == "awq" else q.prepare(model, config)
        )
        assert calibrate is not None
        calibrate(prepared)
        return q.convert(prepared)


def require_accelerate() -> None:
    """INC's GPTQ module imports its layer-wise helpers, which import accelerate (undeclared by INC)."""
    if importlib.util.find_spec("accelerate") is None:
        raise MissingPackageError(
            "gptq needs the accelerate package (INC imports it for GPTQ): pip install accelerate"
        )


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """AWQ's absorb-layer detection runs torch.jit.trace, whose TracerWarnings are INC's internals, not ours."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def autotune_woq(
    model: Any,
    configs: list[Any],
    tolerable_loss: float,
    eval_fn: Callable[[Any], float],
    calibrate: Callable[[Any], None] | None,
    example: Any,
) -> Any:
    """INC autotune over `configs` in order (most compressed first); returns the chosen quantized model."""
    q = api()
    if any(type(c).__name__ == "GPTQConfig" for c in configs):
        require_accelerate()
    tc = q.TuningConfig(config_set=configs, tolerable_loss=tolerable_loss, max_trials=len(configs))
    with _quiet_tracing():
        return q.autotune(model, tune_config=tc, eval_fn=eval_fn, run_fn=calibrate, example_inputs=example)


def woq_module_types() -> tuple[type[Any], ...]:
    from neural_compressor.torch.algorithms.weight_only.modules import WeightOnlyLinear

    return (WeightOnlyLinear,)


def dequantized_linears(model: Any) -> dict[str, tuple[Any, Any]]:
    """Module name -> (float weight [out, in], bias or None) for every weight-only quantized layer: exactly
    what its forward multiplies by. AWQ's MulLinear scales its input first, which folds into the weight's
    columns."""
    import torch

    (woq,) = woq_module_types()
    out: dict[str, tuple[Any, Any]] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            inner = getattr(module, "linear", None)
            if isinstance(inner, woq) and hasattr(module, "input_scale"):
                weight = inner.recover().float() * module.input_scale.float().view(1, -1)
                out[name] = (weight, inner.bias)
            elif isinstance(module, woq) and not any(name.startswith(f"{k}.") for k in out):
                out[name] = (module.recover().float(), module.bias)
    return out


def save_woq(model: Any, directory: Path) -> None:
    api().save(model, str(directory))


def load_woq(directory: Path, conv1d_to_linear: bool = False) -> Any:
    """Rebuild the architecture from config.json, swap in INC's modules and load every tensor.

    INC's loader only fills the quantized modules; embeddings and norms would stay random, so the full
    state dict INC saved is loaded on top, strictly.
    """
    import torch
    from transformers import AutoConfig

    from scaling.compat.transformers import model_from_config
    from scaling.compress.model_io import model_class

    config = AutoConfig.from_pretrained(str(directory))
    fresh = model_from_config(model_class(config), config, dtype=torch.float32)
    if conv1d_to_linear:
        globals()["conv1d_to_linear"](fresh)
    with contextlib.redirect_stdout(io.StringIO()), restricted_torch_load():  # INC prints with print()
        model = api().load(str(directory), original_model=fresh)
    state = load_weights_only(Path(directory) / WEIGHT_FILE)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"{directory}: quantized state does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()


def export_pt2e(wrapped: Any, example: tuple[Any, Any], max_batch: int, max_seq: int) -> Any:
    import torch
    from neural_compressor.torch.export import export

    batch = torch.export.Dim("batch", min=1, max=max_batch)
    seq = torch.export.Dim("seq", min=2, max=max_seq)
    shapes = ({0: batch, 1: seq}, {0: batch, 1: seq})
    return export(wrapped, example, dynamic_shapes=shapes)


def quantize_pt2e(
    wrapped: Any,
    method: str,
    example: tuple[Any, Any],
    batches: Iterable[tuple[Any, Any]],
    max_batch: int,
    max_seq: int,
) -> Any:
    """Dynamic or static int8 via PT2E. Always runs the calibration forwards: without one, dynamic
    quantization never runs its weight observers and quantizes every weight to zero."""
    import torch

    from scaling.compat.inc import skip_unannotatable_linears

    q = api()
    # torchao's X86 quantizer fails on some BERT linears; those stay in float instead.
    skip_unannotatable_linears()
    graph = export_pt2e(wrapped, example, max_batch, max_seq)
    cfg = q.DynamicQuantConfig(w_granularity="per_channel") if method == "dynamic" else q.StaticQuantConfig()
    prepared = q.prepare(graph, cfg, example_inputs=example)
    with torch.no_grad():
        for ids, mask in batches:
            prepared(ids, mask)
    return q.convert(prepared)


def count_pt2e_quantized(graph: Any) -> int:
    """Quantize/dequantize nodes in a converted PT2E graph; zero means nothing was quantized."""
    return sum(1 for n in graph.graph.nodes if n.op == "call_function" and "quantize_per" in str(n.target))


def save_pt2e(graph: Any, example: tuple[Any, Any], directory: Path) -> None:
    graph.save(example_inputs=example, output_dir=str(directory))


def load_pt2e(directory: Path) -> Any:
    # torch.export.load unpickles pickled weights with weights_only=False and opaque objects with pickle.loads
    refuse_unsafe_pt2(Path(directory) / WEIGHT_FILE)
    with restricted_torch_load():
        return api().load(str(directory))
