"""`scaling compress`: quantize, prune, evaluate, report, pipeline (distill joins later).

Heavy imports happen inside each command. User mistakes (scaling.errors.UserError) become one message and
exit code 2 (scaling.cli.main does that for every command); a compression whose result fails its sanity
check exits 1 with one message; nothing is written half-way in either case (outputs are assembled in a
temporary sibling directory).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

MODEL_ARG = click.argument("model", metavar="MODEL", type=click.Path(path_type=Path))
OUTPUT_OPT = click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Output directory (must not exist).",
)
OVERWRITE_OPT = click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")


def _friendly(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from scaling.compress.errors import CompressionFailed

        _quiet_libraries()
        try:
            return func(*args, **kwargs)
        except CompressionFailed as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _quiet_libraries() -> None:
    import os

    if "LOGLEVEL" in os.environ:
        return
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _table(rows: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        if isinstance(value, float):
            value = f"{value:.4g}"
        click.echo(f"  {key.ljust(width)}  {value}")


def _report_after(source: Path, output: Path, data: str | None, label_column: str) -> None:
    from scaling.compress.config import EvalConfig
    from scaling.compress.report import evaluate_all, write_report

    rows = evaluate_all([source, output], EvalConfig(data=data, label_column=label_column, max_samples=32))
    files = write_report(rows, output / "report")
    # The measured comparison also belongs in the output's own record.
    manifest_path = output / "compression.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["evaluation"] = {"source": rows[0], "output": rows[1]}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    click.echo(files["markdown"].read_text())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def compress() -> None:
    """Quantize (Intel Neural Compressor), prune, evaluate and compare finished models.

    MODEL is an HF model directory, one of our outputs, or a training checkpoint.
    """


@compress.command()
@MODEL_ARG
@OUTPUT_OPT
@click.option(
    "--method",
    type=click.Choice(["rtn", "gptq", "awq", "dynamic", "static", "smoothquant"]),
    default="rtn",
    show_default=True,
    help="rtn/gptq/awq: weight-only int4/int8 (any CPU; files shrink, CPU latency does not). "
    "dynamic/static: int8 PT2E (x86, experimental). smoothquant: needs IPEX.",
)
@click.option(
    "--bits", type=int, default=4, show_default=True, help="Weight bits (4 or 8; 8 for dynamic/static)."
)
@click.option(
    "--group-size", type=int, default=32, show_default=True, help="Weights per scale; -1 = per channel."
)
@click.option(
    "--sym/--asym", default=True, show_default=True, help="Symmetric weights (8-bit asym is refused)."
)
@click.option(
    "--calib-data", metavar="SPEC", help="Calibration text: file.txt, file.jsonl:field, file.csv:column."
)
@click.option("--calib-samples", type=int, default=32, show_default=True)
@click.option("--seq-len", type=int, default=128, show_default=True)
@click.option(
    "--tune", is_flag=True, help="Accuracy-driven search (INC autotune) over int4 g128, int4 g32, int8."
)
@click.option("--max-quality-drop", type=float, default=0.01, show_default=True, help="Relative, for --tune.")
@click.option("--eval-data", metavar="SPEC", help="Quality data for --tune/--report (default: --calib-data).")
@click.option("--label-column", default="label", show_default=True)
@click.option("--report", "make_report", is_flag=True, help="Evaluate input and output; write OUTPUT/report.")
@OVERWRITE_OPT
@_friendly
def quantize(model: Path, output: Path, make_report: bool, overwrite: bool, **opts: Any) -> None:
    """Quantize MODEL into OUTPUT with Intel Neural Compressor."""
    from scaling.compress.config import QuantizeConfig
    from scaling.compress.quantize import quantize as run

    cfg = QuantizeConfig(**opts)
    manifest = run(model, output, cfg, overwrite=overwrite)
    res = manifest["results"]
    rows = [("output", str(output)), ("method", cfg.method), ("bits", manifest["settings"]["bits"])]
    rows += [
        ("group size", manifest["settings"]["group_size"]),
        ("output rel. error", res["output_rel_error"]),
    ]
    if "linear_size_ratio" in res:
        rows.append(("linear weights ×", res["linear_size_ratio"]))
    rows.append(("hardware", manifest["hardware"]))
    _table(rows)
    if make_report:
        _report_after(model, output, opts["eval_data"] or opts["calib_data"], opts["label_column"])


@compress.command()
@MODEL_ARG
@OUTPUT_OPT
@click.option(
    "--method", type=click.Choice(["magnitude", "structured"]), default="magnitude", show_default=True
)
@click.option(
    "--sparsity", type=float, default=0.5, show_default=True, help="magnitude: share of zeroed weights."
)
@click.option("--scope", type=click.Choice(["global", "layer"]), default="global", show_default=True)
@click.option(
    "--heads", type=float, default=0.0, help="structured: share of attention heads (KV groups) removed."
)
@click.option("--ffn", type=float, default=0.0, help="structured: share of FFN channels removed.")
@click.option(
    "--importance-data", metavar="SPEC", help="structured: text to score heads/channels by activations."
)
@click.option(
    "--recover-steps", type=int, default=0, show_default=True, help="Fine-tuning steps after pruning."
)
@click.option("--data", "recover_data", metavar="SPEC", help="Data for --recover-steps (and --report).")
@click.option("--lr", "recover_lr", type=float, default=5e-5, show_default=True)
@click.option("--seq-len", type=int, default=128, show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--report", "make_report", is_flag=True, help="Evaluate input and output; write OUTPUT/report.")
@OVERWRITE_OPT
@_friendly
def prune(model: Path, output: Path, make_report: bool, overwrite: bool, **opts: Any) -> None:
    """Prune MODEL into OUTPUT: zero weights (magnitude) or remove heads/FFN channels (structured)."""
    from scaling.compress.config import PruneConfig
    from scaling.compress.prune import prune as run

    cfg = PruneConfig(**opts)
    manifest = run(model, output, cfg, overwrite=overwrite)
    res = manifest["results"]
    rows = [("output", str(output)), ("method", cfg.method)]
    rows += [("parameters", f"{res['parameters_before']:,} -> {res['parameters_after']:,}")]
    if "linear_sparsity" in res:
        rows.append(("linear sparsity", res["linear_sparsity"]))
    for what, change in res.get("removed", {}).items():
        if isinstance(change, dict):
            rows.append((what, f"{change['before']} -> {change['after']}"))
    _table(rows)
    if make_report:
        _report_after(model, output, opts["recover_data"] or opts["importance_data"], opts["label_column"])


def _eval_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--data", metavar="SPEC", help="Quality data (none: size and speed only)."),
        click.option("--task", type=click.Choice(["clm", "mlm", "seq-cls"]), help="Default: from the model."),
        click.option("--label-column", default="label", show_default=True),
        click.option("--max-samples", type=int, default=64, show_default=True),
        click.option("--seq-len", type=int, default=128, show_default=True),
        click.option("--batch-size", type=int, default=8, show_default=True),
        click.option("--warmup", type=int, default=2, show_default=True),
        click.option("--runs", type=int, default=5, show_default=True),
        click.option("--speed/--no-speed", default=True, show_default=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@compress.command()
@MODEL_ARG
@_eval_options
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the results here.")
@_friendly
def evaluate(model: Path, json_out: Path | None, **opts: Any) -> None:
    """Perplexity/accuracy, size, parameters, CPU latency and throughput of MODEL."""
    from scaling.compress.config import EvalConfig
    from scaling.compress.evaluate import evaluate_path

    results = evaluate_path(model, EvalConfig(**opts))
    _table([(k, v) for k, v in results.items() if not isinstance(v, dict)])
    if json_out:
        json_out.write_text(json.dumps(results, indent=2) + "\n")


@compress.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@OUTPUT_OPT
@_eval_options
@_friendly
def report(models: tuple[Path, ...], output: Path, **opts: Any) -> None:
    """Compare MODELS (the first is the baseline): report.md, report.json, report.png in OUTPUT."""
    from scaling.compress.config import EvalConfig
    from scaling.compress.report import evaluate_all, write_report

    rows = evaluate_all(list(models), EvalConfig(**opts))
    files = write_report(rows, output)
    click.echo(files["markdown"].read_text())
    click.echo("wrote " + ", ".join(str(p) for p in files.values()))


@compress.command("export")
@MODEL_ARG
@OUTPUT_OPT
@OVERWRITE_OPT
@_friendly
def export_command(model: Path, output: Path, overwrite: bool) -> None:
    """Write a weight-only quantized MODEL (rtn, gptq, awq) as a plain HF directory that
    `from_pretrained` loads without INC (dequantized weights: the outputs the quantized model gives)."""
    from scaling.compress.export import export_plain

    manifest = export_plain(model, output, overwrite=overwrite)
    _table(
        [
            ("output", str(output)),
            ("from", f"{manifest['method']} ({model})"),
            ("max |diff| to quantized", manifest["results"]["max_abs_diff_to_quantized"]),
            ("load with", f"AutoModelFor...from_pretrained({str(output)!r})"),
        ]
    )


@compress.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@OUTPUT_OPT
@click.option("--model", "model_override", help="Override the recipe's model.")
@OVERWRITE_OPT
@_friendly
def pipeline(recipe: Path, output: Path, model_override: str | None, overwrite: bool) -> None:
    """Run a prune -> distill -> quantize RECIPE (YAML); keep every stage; report at the end."""
    from scaling.compress.pipeline import parse_recipe, run

    summary = run(parse_recipe(recipe, model_override), output, overwrite=overwrite)
    _table(
        [(f"stage {i}", f"{s['kind']} -> {output / s['output']}") for i, s in enumerate(summary["stages"], 1)]
    )
    click.echo((output / "report" / "report.md").read_text())


# A DeepSpeed training run with all `scaling train` options; the module builds them on first use.
from scaling.cli.distill import distill as _distill  # noqa: E402

compress.add_command(_distill)
