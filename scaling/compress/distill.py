"""Knowledge distillation as a DeepSpeed training run: a frozen teacher, a student trained like any model.

The student is what `scaling train` would train (same engine, data stream, checkpoints, resume, export);
`DistillRun` only swaps the objective and adds the teacher:

    loss = alpha * task_loss + (1 - alpha) * T^2 * KL(teacher_T || student_T)
           + hidden_loss * MSE(proj(h_student), h_teacher) + attention_loss * MSE(A_student, A_teacher)

KL is taken at temperature T per predicted token (clm: positions whose next token is a label; mlm: the masked
positions) or per sample (seq-cls). Hidden states and attention maps are matched through a layer map (student
layer i <-> teacher layer map[i]); a learned linear projection bridges different widths.

Under ZeRO-3 the teacher gets its own DeepSpeed engine, partitioned with ZeRO-3 and without an optimizer, so
a teacher larger than one rank's share never sits whole on any rank. Otherwise each rank keeps a full copy.

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from scaling.compress.errors import CompressUserError, NotAModelError
from scaling.config.fields import option
from scaling.engine.trainer import TrainingRun
from scaling.errors import ConfigError, Problem, UserError

if TYPE_CHECKING:
    from scaling.checkpoint.store import CheckpointRef
    from scaling.config.run import RunConfig
    from scaling.distributed.env import LaunchEnv
    from scaling.engine.prepare import RunRequest
    from scaling.engine.trainer import TrainResult

DISTILL_CONFIG_FILE = "distill_config.json"
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


# -- the objective --------------------------------------------------------------------------------------


@dataclass
class LossParts:
    """One micro-batch's objective and its terms (the terms detached, for reporting)."""

    total: torch.Tensor
    """What backward runs on."""
    task: float
    """The student's own task loss (cross-entropy against the labels)."""
    kd: float
    """KL(teacher || student) at temperature T, before the T^2 factor."""
    hidden: float = 0.0
    """Hidden-state MSE (0 when off)."""
    attention: float = 0.0
    """Attention-map MSE (0 when off)."""


def kd_positions(task: str, labels: torch.Tensor) -> torch.Tensor | None:
    """Which logits the KL compares: a bool mask shaped like the logits' leading dims (None: all samples)."""
    if task == "seq-cls":
        return None
    if task == "clm":
        # Position t predicts token t+1; only those with a real next token count.
        return labels[:, 1:] != -100
    return labels != -100


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """Mean KL(teacher_T || student_T) over the positions in `mask` (or over all rows), in fp32."""
    import torch.nn.functional as F

    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    if mask is None:
        return kl.mean()
    mask = mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp(min=1.0)


def _aligned_logits(
    task: str, student: torch.Tensor, teacher: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if task == "clm":
        return student[:, :-1], teacher[:, :-1]
    return student, teacher


def hidden_mse(
    student_states: tuple[torch.Tensor, ...],
    teacher_states: tuple[torch.Tensor, ...],
    pairs: list[tuple[int, int]],
    token_mask: torch.Tensor,
    projection: Any | None,
) -> torch.Tensor:
    """Mean over layer pairs of the per-token MSE between (projected) student and teacher hidden states."""
    mask = token_mask.float()
    total = 0.0
    for s, t in pairs:
        hs = student_states[s].float()
        if projection is not None:
            hs = projection(hs)
        per_token = (hs - teacher_states[t].float()).pow(2).mean(-1)
        total = total + (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    return total / max(len(pairs), 1)


def attention_mse(
    student_maps: tuple[torch.Tensor, ...],
    teacher_maps: tuple[torch.Tensor, ...],
    pairs: list[tuple[int, int]],
    token_mask: torch.Tensor,
) -> torch.Tensor:
    """Mean over layer pairs of the squared error of attention rows (summed over keys), over real queries.

    With different head counts the maps are averaged over heads first."""
    mask = token_mask.float()
    total = 0.0
    for s, t in pairs:
        a_s, a_t = student_maps[s].float(), teacher_maps[t].float()
        if a_s.shape[1] != a_t.shape[1]:
            a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
        per_query = (a_s - a_t).pow(2).sum(-1).mean(1)  # [batch, queries]
        total = total + (per_query * mask).sum() / mask.sum().clamp(min=1.0)
    return total / max(len(pairs), 1)


def distill_loss(
    cfg: DistillConfig,
    task: str,
    student_out: Any,
    teacher_out: Any,
    batch: dict[str, torch.Tensor],
    *,
    layer_pairs: list[tuple[int, int]] | None = None,
    projection: Any | None = None,
) -> LossParts:
    """The objective of one micro-batch from both models' outputs (see the module docstring)."""

    labels = batch["labels"]
    s_logits, t_logits = _aligned_logits(task, student_out.logits, teacher_out.logits)
    kd = kd_loss(s_logits, t_logits, kd_positions(task, labels), cfg.temperature)
    task_loss = student_out.loss if cfg.alpha > 0 else torch.zeros((), device=kd.device)
    total = cfg.alpha * task_loss.float() + (1.0 - cfg.alpha) * cfg.temperature**2 * kd
    parts = LossParts(total=total, task=float(task_loss.detach()), kd=float(kd.detach()))
    if cfg.hidden_loss > 0 or cfg.attention_loss > 0:
        assert layer_pairs is not None
        ids = batch["input_ids"]
        token_mask = batch.get("attention_mask")
        if token_mask is None:
            token_mask = torch.ones_like(ids)
        if cfg.hidden_loss > 0:
            # Index 0 of hidden_states is the embedding output; layer i's output is index i + 1.
            pairs = [(0, 0)] + [(s + 1, t + 1) for s, t in layer_pairs]
            hidden = hidden_mse(
                student_out.hidden_states, teacher_out.hidden_states, pairs, token_mask, projection
            )
            total = total + cfg.hidden_loss * hidden
            parts.hidden = float(hidden.detach())
        if cfg.attention_loss > 0:
            attention = attention_mse(student_out.attentions, teacher_out.attentions, layer_pairs, token_mask)
            total = total + cfg.attention_loss * attention
            parts.attention = float(attention.detach())
        parts.total = total
    return parts


def default_layer_map(student_layers: int, teacher_layers: int, kept: list[int] | None) -> list[int]:
    """A reduced student matches the layers it was copied from; any other evenly spaced, last to last."""
    if kept is not None and len(kept) == student_layers:
        return list(kept)
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


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


def _widths(config: Any) -> int | None:
    from scaling.models.load import hidden_size_of

    return hidden_size_of(config)


def prepare(request: RunRequest, cfg: DistillConfig) -> tuple[RunConfig, DistillConfig]:
    """Check everything, build the student, write OUTPUT/run_config.json and distill_config.json.

    Every check runs before anything is written (bad input leaves no output behind), except that a teacher
    given as a training checkpoint is first exported to OUTPUT/teacher, since the checks read its config."""
    from scaling.compress.student import num_layers, write_reduced_student
    from scaling.data.tokenizer import has_tokenizer, load_tokenizer, tokenizer_fingerprint
    from scaling.engine.prepare import materialize, validate
    from scaling.models import describe_source, hf_config_for

    problems = cfg.problems()
    # DistillRun is the data-parallel (ZeRO) trainer; the pipeline and AutoTP engines are other subclasses.
    problems.extend(_parallel_problems(request.parallel))
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
            if s_vocab is not None and t_vocab is not None and s_vocab != t_vocab:
                raise CompressUserError(
                    f"vocabulary mismatch: the teacher has {t_vocab} tokens, the student {cfg.student} has "
                    f"{s_vocab}; distillation compares their token distributions, so the student must use "
                    "the teacher's tokenizer"
                )
            if has_tokenizer(student_dir) and tokenizer_fingerprint(load_tokenizer(student_dir)) != (
                tokenizer_fingerprint(tokenizer)
            ):
                raise CompressUserError(
                    f"vocabulary mismatch: the student {cfg.student} has its own tokenizer, different from the "
                    f"teacher's in {tokenizer_dir}; teacher and student must share one tokenizer"
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
    layout = _parallel_problems(checked.parallel)  # degrees the JSON itself sets
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


def _parallel_problems(parallel: Any) -> list[Problem]:
    """DistillRun is the data-parallel (ZeRO) trainer; the pipeline, AutoTP and Ulysses engines are other
    TrainingRun subclasses."""
    return [
        Problem(option, "distillation runs data-parallel with ZeRO only", value)
        for option, value in (
            ("--pipeline-stages", parallel.pipeline_stages),
            ("--tensor-parallel", parallel.tensor_parallel),
            ("--sequence-parallel", parallel.sequence_parallel),
        )
        if value > 1
    ]


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
    if vocab is not None and model.get_input_embeddings().weight.shape[0] != vocab:
        model.resize_token_embeddings(vocab)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
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


def teacher_deepspeed_config(run: RunConfig) -> dict[str, Any]:
    """The teacher's engine: ZeRO-3 partitioned like the student's, no optimizer, same precision."""
    zero = run.deepspeed.get("zero_optimization", {})
    section: dict[str, Any] = {"stage": 3}
    for key, value in zero.items():
        if key.startswith("stage3_") or key in ("offload_param", "param_persistence_threshold"):
            section[key] = value
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": run.optim.micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": section,
        "steps_per_print": 1 << 30,
    }
    for key in ("bf16", "fp16"):
        if run.deepspeed.get(key, {}).get("enabled"):
            config[key] = {"enabled": True}
    return config


@contextmanager
def _zero3_init(ds_config: dict[str, Any]) -> Iterator[None]:
    """Partition parameters as transformers creates them (see scaling.engine.build._zero3_construction)."""
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    keep_alive = HfDeepSpeedConfig(ds_config)
    try:
        yield
    finally:
        del keep_alive
        unset_hf_deepspeed_config()


class _StateKeepingCheckpoints:
    """Wraps the run's CheckpointManager to keep the rank state a resume loaded (DistillRun restores its
    own additions from it)."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.loaded_state: dict[str, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def load(self, engine: Any, ref: Any, **kwargs: Any) -> dict[str, Any]:
        state = self._inner.load(engine, ref, **kwargs)
        self.loaded_state = state
        return state


class DistillRun(TrainingRun):
    """A training run whose model is the student and whose objective also looks at a frozen teacher."""

    def __init__(self, run: RunConfig, env: LaunchEnv, distill: DistillConfig):
        super().__init__(run, env)
        self.distill = distill
        self.ckpt = _StateKeepingCheckpoints(self.ckpt)  # type: ignore[assignment]
        self.teacher: Any = None
        self.projection: Any = None
        self.projection_optim: Any = None
        self.layer_pairs: list[tuple[int, int]] | None = None
        self.last_parts: LossParts | None = None

    @property
    def _wants_hidden(self) -> bool:
        return self.distill.hidden_loss > 0

    @property
    def _wants_attention(self) -> bool:
        return self.distill.attention_loss > 0

    def build_engine(self) -> tuple[Any, Any]:

        from scaling.compress.student import num_layers

        engine, hf_config = super().build_engine()
        if self._wants_attention:
            # sdpa returns no attention probabilities; eager computes the same function and does.
            engine.module.set_attn_implementation("eager")
        self.teacher = self._build_teacher(engine.device)
        t_config = self._teacher_module().config
        if self._wants_hidden or self._wants_attention:
            layer_map = self.distill.layer_map or default_layer_map(
                num_layers(hf_config), num_layers(t_config), self.distill.kept_layers
            )
            self.layer_pairs = list(enumerate(layer_map))
        s_width, t_width = _widths(hf_config), _widths(t_config)
        if self._wants_hidden and s_width != t_width:
            assert s_width is not None and t_width is not None
            # Trained alongside the student but not part of it (the export stays a plain student), so it
            # has its own optimizer; its gradients are averaged over ranks by hand (see train_step).
            generator = torch.Generator().manual_seed(self.run.optim.seed)
            self.projection = torch.nn.Linear(s_width, t_width, bias=False)
            with torch.no_grad():
                bound = 1.0 / math.sqrt(s_width)
                self.projection.weight.uniform_(-bound, bound, generator=generator)
            self.projection.to(engine.device)
            self.projection_optim = torch.optim.AdamW(
                self.projection.parameters(),
                lr=self.run.optim.lr,
                betas=self.run.optim.betas,
                eps=self.run.optim.eps,
                weight_decay=0.0,
            )
        return engine, hf_config

    def _teacher_module(self) -> Any:
        return getattr(self.teacher, "module", self.teacher)

    def _build_teacher(self, device: Any) -> Any:

        from scaling.models import model_class_for

        run = self.run
        assert self.distill.teacher_dir is not None
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.optim.precision, torch.float32)
        kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
        if self._wants_attention:
            kwargs["attn_implementation"] = "eager"
        cls = model_class_for(run.model.task)
        if run.zero_stage == 3:
            import deepspeed

            ds_config = teacher_deepspeed_config(run)
            with _zero3_init(ds_config):
                model = cls.from_pretrained(self.distill.teacher_dir, **kwargs)
            model.requires_grad_(False)
            teacher, _, _, _ = deepspeed.initialize(model=model, config=ds_config, dist_init_required=False)
            teacher.eval()
            return teacher
        model = cls.from_pretrained(self.distill.teacher_dir, **kwargs).to(device)
        model.requires_grad_(False)
        model.eval()
        return model

    def _teacher_outputs(self, batch: dict[str, torch.Tensor], **extra: Any) -> Any:

        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            return self.teacher(**inputs, **extra)

    def _extra_outputs(self) -> dict[str, bool]:
        extra = {}
        if self._wants_hidden:
            extra["output_hidden_states"] = True
        if self._wants_attention:
            extra["output_attentions"] = True
        return extra

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        extra = self._extra_outputs()
        student = self.engine(**batch, **extra)
        teacher = self._teacher_outputs(batch, **extra)
        parts = distill_loss(
            self.distill,
            self.run.model.task,
            student,
            teacher,
            batch,
            layer_pairs=self.layer_pairs,
            projection=self.projection,
        )
        self.last_parts = parts
        return parts.total

    def train_step(self, step: int, window: Any, sigterm: Any) -> bool:
        lr = float(self.engine.get_lr()[0])
        stop = super().train_step(step, window, sigterm)
        if self.projection is not None:
            self._step_projection(lr)
        return stop

    def _step_projection(self, lr: float) -> None:
        import torch.distributed as dist

        from scaling.engine.trainer import _loss_scale

        scale = _loss_scale(self.engine) or 1.0
        world = dist.get_world_size() if dist.is_initialized() else 1
        for param in self.projection.parameters():
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            if world > 1:
                dist.all_reduce(param.grad)
            param.grad.div_(world * scale)
        for group in self.projection_optim.param_groups:
            group["lr"] = lr
        self.projection_optim.step()
        self.projection_optim.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The student's task metrics plus `eval_kd_loss`: KL(teacher || student) at T on the eval data."""
        import torch.distributed as dist

        metrics = super().evaluate()
        task = self.run.model.task
        engine = self.engine
        engine.eval()
        totals = torch.zeros(2, dtype=torch.float64)
        for batch in self.eval_batches:
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            student = engine(**batch)
            teacher = self._teacher_outputs(batch)
            s, t = _aligned_logits(task, student.logits, teacher.logits)
            mask = kd_positions(task, batch["labels"])
            count = float(mask.sum()) if mask is not None else float(s.shape[0])
            totals[0] += float(kd_loss(s, t, mask, self.distill.temperature)) * count
            totals[1] += count
        if dist.is_initialized():
            dist.all_reduce(totals)
        engine.train()
        metrics["eval_kd_loss"] = (totals[0] / totals[1].clamp(min=1)).item()
        return metrics

    def before_commit(self, ref: CheckpointRef) -> None:
        """The distillation settings beside run_config.json in every checkpoint, readable without torch (the
        rank states keep a copy for the resume check)."""
        super().before_commit(ref)
        if self.rank == 0:
            from scaling.checkpoint.store import atomic_write_text

            atomic_write_text(ref.ours / DISTILL_CONFIG_FILE, self.distill.to_json())

    def _rank_state(self, step: int, tokens_seen: int) -> dict[str, Any]:
        state = super()._rank_state(step, tokens_seen)
        state["distill"] = dataclasses.asdict(self.distill)
        if self.projection is not None:
            state["projection"] = self.projection.state_dict()
            state["projection_optim"] = self.projection_optim.state_dict()
        return state

    def _maybe_resume(self) -> tuple[int, int]:
        start = super()._maybe_resume()
        state = self.ckpt.loaded_state
        if state is None:
            return start
        saved = state.get("distill")
        if saved is not None:
            changed = [k for k in LOSS_FIELDS if saved.get(k) != getattr(self.distill, k)]
            if changed:
                raise UserError(
                    "cannot resume: the checkpoint was distilled with different "
                    + ", ".join(f"{k} ({saved.get(k)} -> {getattr(self.distill, k)})" for k in changed)
                )
        if self.projection is not None:
            if "projection" not in state:
                raise UserError("cannot resume: the checkpoint has no hidden-state projection")
            self.projection.load_state_dict(state["projection"])
            self.projection_optim.load_state_dict(state["projection_optim"])
        return start


def distill_train(run: RunConfig, distill: DistillConfig, env: LaunchEnv) -> TrainResult:
    """Run (or resume) the distillation described by `run` + `distill` in this process, as rank `env.rank`
    (process group, failure reports and teardown as for any training run)."""
    from scaling.engine.trainer import train

    return train(run, env, make=lambda r, e: DistillRun(r, e, distill))


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
