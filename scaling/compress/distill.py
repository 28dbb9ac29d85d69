"""Knowledge distillation as a DeepSpeed training run: a frozen teacher, a student trained like any model.

The student is what `scaling train` would train (same engine, layouts, data stream, checkpoints, resume,
export); only the objective differs (scaling.compress.distill_objective, its arithmetic in
scaling.compress.distill_loss). This module holds the settings (`DistillConfig`), the preparation on the
launching host (`prepare`: teacher, student, tokenizer, checks) and the compression pipeline's distill stage.

Run directory (OUTPUT): run_config.json and distill_config.json (read by every rank), student/ (the initial
student when it was built here), teacher/ (a teacher exported from a training checkpoint), checkpoints/,
final/ (the student as a plain HF directory).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from scaling.compress.config import DISTILL_CONFIG_FILE
from scaling.compress.distill_loss import default_layer_map
from scaling.compress.errors import CompressUserError, NotAModelError
from scaling.config.fields import option
from scaling.errors import ConfigError, Problem, UserError
from scaling.files import apply_umask

if TYPE_CHECKING:
    from scaling.config.run import RunConfig
    from scaling.distributed.env import LaunchEnv
    from scaling.engine.prepare import RunRequest
    from scaling.engine.trainer import TrainResult

STUDENT_DIR = "student"
TEACHER_DIR = "teacher"
LOSS_FIELDS = ("alpha", "temperature", "hidden_loss", "attention_loss", "layer_map")
"""Settings that define the objective: a resume must not change them."""


@dataclass(kw_only=True)
class DistillConfig:
    """How to distil: the teacher, where the student comes from, and the weights of the objective."""

    teacher: str = option()
    """Teacher (required): an HF model directory with weights, or a training checkpoint (run dir,
    checkpoints/, step dir)."""
    student: str | None = option(None)
    """Student: an HF model directory, a config.json or a preset (exclusive with --student-layers)."""
    student_layers: int | None = option(None)
    """Build the student from the teacher with this many layers (every other layer by default)."""
    student_layer_map: list[int] | None = option(None)
    """Teacher layers the --student-layers student keeps, in order, e.g. 0,2,4 (default: evenly spaced)."""
    alpha: float = option(0.5)
    """Weight of the task loss, in [0, 1]; 1 - alpha weighs the soft-label KL."""
    temperature: float = option(2.0)
    """Softmax temperature T of the KL term (its gradient is rescaled by T^2)."""
    hidden_loss: float = option(0.0)
    """Weight of the hidden-state MSE (0: off)."""
    attention_loss: float = option(0.0)
    """Weight of the attention-map MSE (0: off; both models then use eager attention)."""
    layer_map: list[int] | None = option(None)
    """Teacher layer matched by each student layer for hidden/attention losses (default: the kept layers of
    a reduced student, else evenly spaced ending at the last layer)."""
    teacher_dir: str | None = None
    """Resolved by `prepare`: the teacher's HF directory."""
    student_dir: str | None = None
    """Resolved by `prepare`: the initial student's HF directory."""
    teacher_layers: int | None = None
    """Resolved by `prepare`: blocks of the teacher."""
    kept_layers: list[int] | None = None
    """Resolved by `prepare` for a reduced student: the teacher layer each student layer was copied from."""

    def problems(self) -> list[Problem]:
        """Checks that need no files."""
        out = []
        if not 0.0 <= self.alpha <= 1.0:
            out.append(Problem("--alpha", "must be within [0, 1]", self.alpha))
        if not self.temperature > 0 or not math.isfinite(self.temperature):
            out.append(Problem("--temperature", "must be positive", self.temperature))
        for name in ("hidden_loss", "attention_loss"):
            value = getattr(self, name)
            if not value >= 0 or not math.isfinite(value):
                out.append(Problem(f"--{name.replace('_', '-')}", "must be a non-negative weight", value))
        if (self.student is None) == (self.student_layers is None):
            out.append(
                Problem("--student", "give exactly one of --student and --student-layers", self.student)
            )
        if self.student_layers is not None and self.student_layers < 1:
            out.append(Problem("--student-layers", "must be at least 1", self.student_layers))
        if self.student_layer_map is not None:
            if self.student_layers is None:
                out.append(Problem("--student-layer-map", "only applies with --student-layers"))
            elif len(self.student_layer_map) != self.student_layers:
                out.append(
                    Problem(
                        "--student-layer-map",
                        f"names {len(self.student_layer_map)} layers but --student-layers is "
                        f"{self.student_layers}",
                        _join(self.student_layer_map),
                    )
                )
        if self.layer_map is not None and self.hidden_loss == 0 and self.attention_loss == 0:
            out.append(Problem("--layer-map", "only applies with --hidden-loss or --attention-loss"))
        return out

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> DistillConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def parse_layers(text: str | None, option: str) -> list[int] | None:
    """`0,2,4` -> [0, 2, 4]; None stays None."""
    if text is None or text == "":
        return None
    try:
        return [int(x) for x in str(text).split(",")]
    except ValueError:
        raise ConfigError([Problem(option, "expected comma-separated layer numbers", text)]) from None


def _join(layers: list[int]) -> str:
    return ",".join(map(str, layers))


# -- preparing a run (launching host, once) --------------------------------------------------------------


def resolve_teacher(source: str, output: Path) -> Path:
    """The teacher's HF directory; a training checkpoint is exported to OUTPUT/teacher (once)."""
    from scaling.compress.model_io import is_training_checkpoint
    from scaling.models.load import WEIGHT_FILES

    path = Path(source)
    if not path.exists():
        raise NotAModelError(f"--teacher {source}: no such directory")
    if not path.is_dir():
        raise NotAModelError(
            f"--teacher {source}: not a model (expected an HF model directory with weights or a training "
            "checkpoint)"
        )
    if (path / "config.json").is_file():
        if not any((path / name).exists() for name in WEIGHT_FILES):
            raise NotAModelError(
                f"--teacher {source}: has a config.json but no weights; a teacher must be a trained model"
            )
        return path.resolve()
    if is_training_checkpoint(path):
        from scaling.checkpoint.export import export_checkpoint

        target = output / TEACHER_DIR
        if not (target / "config.json").is_file():
            export_checkpoint(path, target)
        return target.resolve()
    raise NotAModelError(
        f"--teacher {source}: not a model (no config.json with weights, and not a training checkpoint)"
    )


def _load_hf_config(directory: Path, what: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as err:
        raise NotAModelError(f"{what} {directory}: cannot read its config.json ({err})") from None


def _check_teacher_task(config: Any, task: str, teacher: str) -> None:
    from scaling.compress.model_io import task_of_architecture

    arch = (getattr(config, "architectures", None) or ["?"])[0]
    has = task_of_architecture(arch)
    if has != task:
        raise CompressUserError(
            f"--teacher {teacher} is a {arch} ({has}); --task {task} needs a teacher trained for {task} "
            f"(train it first, e.g. `scaling train --task {task} --model {teacher}`)"
        )


def _vocab_of(config: Any) -> int | None:
    value = getattr(config, "vocab_size", None)
    return int(value) if isinstance(value, int) else None


def prepare(request: RunRequest, cfg: DistillConfig) -> tuple[RunConfig, DistillConfig]:
    """Check everything, build the student, write OUTPUT/run_config.json and distill_config.json.

    Every check runs before anything is written (bad input leaves no output behind), except that a teacher
    given as a training checkpoint is first exported to OUTPUT/teacher, since the checks read its config."""
    from scaling.compress.student import num_layers, write_reduced_student
    from scaling.data.tokenizer import has_tokenizer, load_tokenizer, tokenizer_fingerprint
    from scaling.engine.prepare import materialize, validate
    from scaling.models import describe_source, hf_config_for

    problems = cfg.problems()
    # Every layout runs distillation except the combinations the objective refuses (and says why).
    problems.extend(_parallel_problems(cfg, request.parallel))
    if request.lora.enabled or request.lora.four_bit:
        problems.append(
            Problem("--lora-r", "distillation trains the whole student; LoRA is for scaling train")
        )
    if problems:
        raise ConfigError(problems, header="cannot start this distillation")
    task = request.model.task
    output = Path(request.checkpoint.output)
    _check_same_objective(output, cfg, resuming=request.checkpoint.resume is not None)
    teacher_dir = resolve_teacher(cfg.teacher, output)
    t_config = _load_hf_config(teacher_dir, "--teacher")
    _check_teacher_task(t_config, task, cfg.teacher)
    t_layers = num_layers(t_config)
    t_vocab = _vocab_of(t_config)

    # One tokenizer for both: the teacher's. A different one given alongside is a mistake, not a choice.
    tokenizer_dir = teacher_dir if has_tokenizer(teacher_dir) else None
    if request.model.tokenizer is not None:
        if tokenizer_dir is not None and _fingerprint(request.model.tokenizer) != _fingerprint(tokenizer_dir):
            raise CompressUserError(
                f"--tokenizer {request.model.tokenizer} differs from the teacher's tokenizer in {teacher_dir}; "
                "teacher and student must share one vocabulary (drop --tokenizer)"
            )
        tokenizer_dir = Path(request.model.tokenizer)
    if tokenizer_dir is None:
        raise CompressUserError(
            f"--teacher {cfg.teacher} has no tokenizer; pass --tokenizer (the one the teacher was trained with)"
        )
    tokenizer = load_tokenizer(tokenizer_dir)
    if t_vocab is not None and t_vocab < len(tokenizer):
        raise CompressUserError(
            f"vocabulary mismatch: the tokenizer has {len(tokenizer)} tokens but the teacher's embeddings only "
            f"{t_vocab}; use the tokenizer the teacher was trained with"
        )

    kept = None
    student_dir = (output / STUDENT_DIR).resolve()
    if cfg.student_layers is not None:
        if cfg.student_layers > t_layers:
            raise CompressUserError(
                f"--student-layers {cfg.student_layers} is larger than the teacher, which has {t_layers} layers"
            )
        from scaling.compress.student import check_kept_layers, default_kept_layers

        kept = cfg.student_layer_map or default_kept_layers(t_layers, cfg.student_layers)
        check_kept_layers(kept, t_layers)
        s_config = None
        s_layers = cfg.student_layers
    else:
        assert cfg.student is not None
        source = describe_source(cfg.student)
        s_config = hf_config_for(source)
        s_layers = num_layers(s_config)
        if source.has_weights:
            student_dir = Path(source.location).resolve()
            s_vocab = _vocab_of(s_config)
            # A student with a tokenizer of its own is moved to the teacher's (--embedding-init; the run
            # records the plan and every rank applies it), so only a student without one must match.
            moves = has_tokenizer(student_dir) and tokenizer_fingerprint(load_tokenizer(student_dir)) != (
                tokenizer_fingerprint(tokenizer)
            )
            if not moves and s_vocab is not None and t_vocab is not None and s_vocab != t_vocab:
                raise CompressUserError(
                    f"vocabulary mismatch: the teacher has {t_vocab} tokens, the student {cfg.student} has "
                    f"{s_vocab}; distillation compares their token distributions, so the student must use "
                    "the teacher's tokenizer"
                )
        if task == "seq-cls" and source.has_weights:
            s_labels = getattr(s_config, "num_labels", None)
            t_labels = getattr(t_config, "num_labels", None)
            s_arch = (getattr(s_config, "architectures", None) or [""])[0]
            if s_arch.endswith("ForSequenceClassification") and s_labels != t_labels:
                raise CompressUserError(
                    f"the teacher classifies into {t_labels} labels, the student {cfg.student} into {s_labels}"
                )

    layer_map = None
    if cfg.hidden_loss > 0 or cfg.attention_loss > 0:
        layer_map = cfg.layer_map or default_layer_map(s_layers, t_layers, kept)
        if len(layer_map) != s_layers:
            raise ConfigError(
                [
                    Problem(
                        "--layer-map",
                        f"needs one teacher layer per student layer ({s_layers})",
                        _join(layer_map),
                    )
                ]
            )
        bad = [i for i in layer_map if not 0 <= i < t_layers]
        if bad:
            raise ConfigError(
                [
                    Problem(
                        "--layer-map",
                        f"teacher layers {bad} do not exist (0..{t_layers - 1})",
                        _join(layer_map),
                    )
                ]
            )
        if cfg.attention_loss > 0 and s_config is not None:
            s_heads = getattr(s_config, "num_attention_heads", None)
            if s_heads is None:
                raise CompressUserError(f"--attention-loss: the student {cfg.student} has no attention heads")

    num_labels = int(getattr(t_config, "num_labels", request.model.num_labels) or request.model.num_labels)
    model = dataclasses.replace(
        request.model,
        source=str(teacher_dir),
        tokenizer=str(tokenizer_dir.resolve()),
        num_labels=num_labels if task == "seq-cls" else request.model.num_labels,
    )
    # The options and the DeepSpeed JSON are checked against the teacher's shape before anything is written.
    checked = validate(dataclasses.replace(request, model=model))
    layout = _parallel_problems(cfg, checked.parallel)  # degrees the JSON itself sets
    if layout:
        raise ConfigError(layout, header="cannot start this distillation")

    if (student_dir / "config.json").is_file():
        pass  # a given student, or one built by an earlier start of this run (resume)
    elif cfg.student_layers is not None:
        write_reduced_student(
            teacher_dir, student_dir, student_layers=cfg.student_layers, kept=kept, task=task
        )
    else:
        _write_random_student(
            cfg.student or "", student_dir, task=task, tokenizer=tokenizer, vocab=t_vocab,
            num_labels=num_labels, seed=request.optim.seed,
        )  # fmt: skip
    resolved = dataclasses.replace(
        cfg,
        teacher_dir=str(teacher_dir),
        student_dir=str(student_dir),
        teacher_layers=t_layers,
        kept_layers=kept,
        layer_map=layer_map,
    )
    run = materialize(dataclasses.replace(request, model=dataclasses.replace(model, source=str(student_dir))))
    from scaling.checkpoint.store import atomic_write_text

    atomic_write_text(run.output / DISTILL_CONFIG_FILE, resolved.to_json())
    return run, resolved


def _parallel_problems(cfg: DistillConfig, parallel: Any) -> list[Problem]:
    """The degrees this distillation cannot run with, refused before launch (the objective refuses them on
    every rank as well, for runs started by a launcher we did not plan)."""
    from scaling.compress.distill_objective import parallel_problems

    return [Problem(option, why, value) for option, why, value in parallel_problems(cfg, parallel)]


def _check_same_objective(output: Path, cfg: DistillConfig, *, resuming: bool) -> None:
    """A resume continues the objective it started with; refuse before the saved settings are replaced."""
    path = output / DISTILL_CONFIG_FILE
    if not resuming or not path.is_file():
        return
    saved = DistillConfig.load(path)

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, str) and isinstance(b, str) and Path(a).exists() and Path(b).exists():
            return Path(a).resolve() == Path(b).resolve()
        return a == b

    changed = [
        k
        for k in ("teacher", "student", "student_layers", "student_layer_map", *LOSS_FIELDS[:-1])
        if not same(getattr(saved, k), getattr(cfg, k))
    ]
    if cfg.layer_map is not None and cfg.layer_map != saved.layer_map:
        changed.append("layer_map")
    if changed:
        raise CompressUserError(
            f"cannot resume {output}: it was started with different "
            + ", ".join(f"{k} ({getattr(saved, k)} -> {getattr(cfg, k)})" for k in changed)
        )


def _fingerprint(directory: str | Path) -> str:
    from scaling.data.tokenizer import load_tokenizer, tokenizer_fingerprint

    return tokenizer_fingerprint(load_tokenizer(directory))


def _write_random_student(
    source: str, target: Path, *, task: str, tokenizer: Any, vocab: int | None, num_labels: int, seed: int
) -> None:
    """A freshly initialised student (preset or config) saved with the teacher's vocabulary size."""

    from scaling.models import build_model, describe_source

    torch.manual_seed(seed)
    model = build_model(describe_source(source), task=task, tokenizer=tokenizer, num_labels=num_labels)
    weight = model.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor)
    if vocab is not None and weight.shape[0] != vocab:
        model.resize_token_embeddings(vocab)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        apply_umask(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# -- the run (every rank) --------------------------------------------------------------------------------


def load_distill_config(run_dir: Path) -> DistillConfig:
    path = Path(run_dir) / DISTILL_CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing; the run directory was not prepared for distillation")
    return DistillConfig.load(path)


def distill_train(run: RunConfig, distill: DistillConfig, env: LaunchEnv) -> TrainResult:
    """Run (or resume) the distillation described by `run` + `distill` in this process, as rank `env.rank`:
    the composed trainer with the distillation objective on the run's layout (process group, failure reports
    and teardown as for any training run)."""
    from scaling.compress.distill_objective import DistillObjective
    from scaling.engine.trainer import train

    return train(run, env, objective=DistillObjective(run, distill))


# -- the pipeline's distill stage ------------------------------------------------------------------------


def _pipeline_options() -> dict[str, Any]:
    from scaling.config.sections import OptimConfig
    from scaling.data.config import DataConfig

    # The objective and the run take their defaults from their sections; the values written here are the
    # stage's own choices (a short fp32 recovery run on one process), not copies of a section default.
    objective = {name: getattr(DistillConfig, name) for name in LOSS_FIELDS}
    run = {
        "micro_batch": OptimConfig.micro_batch,
        "seed": OptimConfig.seed,
        "seq_len": DataConfig.seq_len,
        "label_column": DataConfig.label_column,
    }
    stage = {"steps": 200, "task": None, "lr": 1e-4, "precision": "fp32", "ds_config": "zero0"}
    return {**stage, **objective, **run, "max_samples": 20000}


PIPELINE_OPTIONS = _pipeline_options()
"""Options of a recipe's `distill:` stage and their defaults."""


def run_distillation(
    student_dir: Path, output_dir: Path, *, teacher_dir: Path, data: str | None, options: dict[str, Any]
) -> dict[str, Any]:
    """Distil `teacher_dir` into `student_dir` on `data` in this process; write the student (HF directory,
    tokenizer, compression.json) at `output_dir`; return the measured results."""
    from scaling.compress.data import read_documents
    from scaling.compress.model_io import FORMAT_HF, task_of_architecture, write_manifest
    from scaling.config.sections import (
        CheckpointConfig,
        DeepSpeedSource,
        LogConfig,
        ModelConfig,
        OptimConfig,
        ParallelConfig,
    )
    from scaling.data.config import DataConfig
    from scaling.engine.prepare import RunRequest
    from scaling.launch.job import JobRequest, job_kind, run_single

    unknown = sorted(set(options) - set(PIPELINE_OPTIONS))
    if unknown:
        raise CompressUserError(
            f"distill stage: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(PIPELINE_OPTIONS))})"
        )
    opts = {**PIPELINE_OPTIONS, **options}
    if not data:
        raise CompressUserError("distill stage needs data: set the recipe's top-level `data`")
    scratch = Path(tempfile.mkdtemp(prefix=f".{Path(output_dir).name}.run-", dir=Path(output_dir).parent))
    try:
        teacher_hf = resolve_teacher(str(teacher_dir), scratch)
        task = opts["task"] or task_of_architecture(
            (getattr(_load_hf_config(teacher_hf, "teacher"), "architectures", None) or [""])[0]
        )
        # The compression data specs (builtin:pydoc, file:field) become one plain training file.
        docs = read_documents(
            data, limit=opts["max_samples"], label_column=opts["label_column"] if task == "seq-cls" else None
        )
        if task == "seq-cls":
            train_file = scratch / "train.tsv"
            rows = ["text\tlabel"] + [
                f"{' '.join(t.split())}\t{y}" for t, y in zip(docs.texts, docs.labels or [], strict=True)
            ]
        else:
            train_file = scratch / "train.txt"
            rows = [" ".join(t.split()) for t in docs.texts]
        train_file.write_text("\n".join(rows) + "\n", encoding="utf-8")
        run_dir = scratch / "run"
        request = RunRequest(
            model=ModelConfig(source=str(student_dir), task=task),
            data=DataConfig(train=[str(train_file)], seq_len=int(opts["seq_len"])),
            optim=OptimConfig(
                micro_batch=int(opts["micro_batch"]),
                lr=float(opts["lr"]),
                max_steps=int(opts["steps"]),
                precision=str(opts["precision"]),
                seed=int(opts["seed"]),
            ),
            checkpoint=CheckpointConfig(output=str(run_dir)),
            log=LogConfig(log_every=max(1, int(opts["steps"]) // 10), tensorboard=False, progress=False),
            parallel=ParallelConfig(),
            deepspeed_source=DeepSpeedSource(config=str(opts["ds_config"])),
            world_size=1,
            explicit=frozenset({"micro_batch", "lr", "precision", "max_steps"}),
        )
        cfg = DistillConfig(
            teacher=str(teacher_hf),
            student=str(student_dir),
            alpha=float(opts["alpha"]),
            temperature=float(opts["temperature"]),
            hidden_loss=float(opts["hidden_loss"]),
            attention_loss=float(opts["attention_loss"]),
            layer_map=parse_layers(opts["layer_map"], "layer_map")
            if isinstance(opts["layer_map"], str)
            else opts["layer_map"],
        )
        # One rank in this process, through the same job dispatch as `scaling compress distill`.
        result = run_single(job_kind("distill"), JobRequest(run=request, objective=cfg))
        assert result.export_dir is not None
        output_dir = Path(output_dir)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        shutil.copytree(result.export_dir, output_dir)
        results = {
            "steps": result.final_step,
            "final_loss": result.final_loss,
            "parameters_student": _parameters(output_dir),
            **result.eval,
        }
        write_manifest(
            output_dir,
            {
                "format": FORMAT_HF,
                "method": "distill",
                "task": task,
                "source": str(student_dir),
                "teacher": str(teacher_dir),
                "settings": {k: opts[k] for k in sorted(opts)},
                "results": results,
            },
        )
        return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                total += math.prod(handle.get_slice(key).get_shape())
    return total
