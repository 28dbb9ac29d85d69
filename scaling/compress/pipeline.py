"""`prune -> distill -> quantize` from one YAML recipe; every stage's output is kept, one report at the end.

Recipe:

    model: path/to/model-or-checkpoint
    data: corpus.txt            # default data spec of every stage (calibration, importance, recovery, report)
    stages:
      - prune: {method: structured, ffn: 0.25}
      - distill: {steps: 200}   # handed to scaling.compress.distill.run_distillation
      - quantize: {method: rtn, bits: 4, group_size: 32}
    report: {max_samples: 32}   # fields of EvalConfig; data defaults to the top-level data

Distillation contract (implemented later on top of the training engine):

    run_distillation(student_dir: Path, output_dir: Path, *, teacher_dir: Path, data: str | None,
                     options: dict) -> dict
    writes an HF model directory (+ tokenizer) at output_dir and returns measured results for the report.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any

from scaling.compress.config import EvalConfig, PruneConfig, QuantizeConfig, Stage
from scaling.compress.errors import CompressUserError
from scaling.compress.model_io import MANIFEST, atomic_output
from scaling.errors import ConfigError, Problem

STAGE_KINDS = ("prune", "distill", "quantize")
DATA_FIELDS = {"prune": ("importance_data", "recover_data"), "quantize": ("calib_data",)}
"""Stage fields that default to the recipe's top-level data."""


@dataclasses.dataclass(kw_only=True)
class Recipe:
    """A parsed pipeline recipe."""

    model: str
    """Input model: HF directory or training checkpoint."""
    stages: list[Stage]
    """Stages in order."""
    data: str | None = None
    """Default data spec of the stages and the report."""
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    """EvalConfig fields for the final report."""


def distiller() -> Any | None:
    """`scaling.compress.distill.run_distillation` once it exists, else None."""
    try:
        module = importlib.import_module("scaling.compress.distill")
    except ModuleNotFoundError as exc:
        if exc.name != "scaling.compress.distill":
            raise
        return None
    return getattr(module, "run_distillation", None)


def parse_recipe(path: Path, model_override: str | None = None) -> Recipe:
    import yaml

    if not path.is_file():
        raise CompressUserError(f"{path}: no such recipe file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CompressUserError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise CompressUserError(f"{path}: a recipe is a mapping with model, stages, data, report")
    problems: list[Problem] = []
    for key in raw:
        if key not in ("model", "stages", "data", "report"):
            problems.append(Problem(key, "unknown recipe key", fix="use model, stages, data, report"))
    model = model_override or raw.get("model")
    if not model:
        problems.append(Problem("model", "missing", fix="a model directory or checkpoint"))
    stages: list[Stage] = []
    for i, entry in enumerate(raw.get("stages") or []):
        where = f"stages[{i}]"
        if not isinstance(entry, dict) or len(entry) != 1:
            problems.append(
                Problem(where, "each stage is a one-key mapping", entry, "e.g. - quantize: {bits: 4}")
            )
            continue
        kind, options = next(iter(entry.items()))
        options = options or {}
        if kind not in STAGE_KINDS:
            problems.append(Problem(where, f"unknown stage {kind!r}", fix=f"use {', '.join(STAGE_KINDS)}"))
            continue
        if not isinstance(options, dict):
            problems.append(Problem(f"{where}.{kind}", "options must be a mapping", options))
            continue
        cls = {"prune": PruneConfig, "quantize": QuantizeConfig}.get(kind)
        if cls is not None:
            names = {f.name for f in dataclasses.fields(cls)}
            problems += [
                Problem(f"{where}.{kind}.{k}", "unknown option", fix=f"known: {', '.join(sorted(names))}")
                for k in options
                if k not in names
            ]
        stages.append(Stage(kind=kind, options=options))
    if not raw.get("stages"):
        problems.append(Problem("stages", "no stages", fix="list prune / distill / quantize stages"))
    report = raw.get("report") or {}
    names = {f.name for f in dataclasses.fields(EvalConfig)}
    problems += [
        Problem(f"report.{k}", "unknown option", fix=f"known: {', '.join(sorted(names))}")
        for k in report
        if k not in names
    ]
    if problems:
        raise ConfigError(problems, header=f"invalid recipe {path}")
    return Recipe(model=str(model), stages=stages, data=raw.get("data"), report=report)


def _config(kind: str, options: dict[str, Any], data: str | None) -> Any:
    cls = PruneConfig if kind == "prune" else QuantizeConfig
    opts = dict(options)
    for name in DATA_FIELDS[kind]:
        if data and opts.get(name) is None:
            # recover_data only matters with recover_steps; importance/calibration data always helps.
            if name == "recover_data" and not opts.get("recover_steps"):
                continue
            opts[name] = data
    try:
        return cls(**opts)
    except TypeError as exc:
        raise CompressUserError(f"{kind} stage: {exc}") from None


def run(recipe: Recipe, output: Path, overwrite: bool = False) -> dict[str, Any]:
    """Run every stage into output/NN-kind, then evaluate all of them into output/report."""
    from scaling.compress import prune as prune_mod
    from scaling.compress import quantize as quant_mod
    from scaling.compress.report import evaluate_all, write_report

    # Check every stage before running any, so a bad last stage does not cost the first ones.
    configs: list[Any] = []
    for stage in recipe.stages:
        if stage.kind == "distill":
            if distiller() is None:
                raise CompressUserError(
                    "distill stage unavailable: scaling.compress.distill.run_distillation is not installed in this "
                    "version; remove the stage or update scaling"
                )
            configs.append(stage.options)
            continue
        cfg = _config(stage.kind, stage.options, recipe.data)
        (prune_mod.validate if stage.kind == "prune" else quant_mod.validate)(cfg)
        configs.append(cfg)
    eval_cfg = EvalConfig(**{"data": recipe.data, **recipe.report})
    summary: dict[str, Any] = {"model": recipe.model, "stages": []}
    with atomic_output(output, overwrite) as tmp:
        current = Path(recipe.model)
        outputs = []
        for i, (stage, cfg) in enumerate(zip(recipe.stages, configs, strict=True), 1):
            out = tmp / f"{i:02d}-{stage.kind}"
            if stage.kind == "prune":
                prune_mod.prune(current, out, cfg)
            elif stage.kind == "quantize":
                quant_mod.quantize(current, out, cfg)
            else:
                run_distillation = distiller()
                assert run_distillation is not None  # checked before any stage ran
                run_distillation(current, out, teacher_dir=Path(recipe.model), data=recipe.data, options=cfg)
            summary["stages"].append({"kind": stage.kind, "output": out.name})
            outputs.append(out)
            current = out
        rows = evaluate_all([Path(recipe.model), *outputs], eval_cfg)
        write_report(rows, tmp / "report")
        summary["report"] = "report/report.md"
        (tmp / "pipeline.json").write_text(json.dumps(summary, indent=2) + "\n")
        _relocate(tmp, output)
    summary["rows"] = rows
    return summary


def _relocate(tmp: Path, final: Path) -> None:
    """Stage manifests and the report name their inputs by path; point them at the final directory."""
    for f in [*tmp.glob(f"*/{MANIFEST}"), tmp / "report" / "report.json", tmp / "report" / "report.md"]:
        if f.is_file():
            f.write_text(f.read_text().replace(str(tmp), str(final)))
