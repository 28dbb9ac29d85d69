"""Turn a run request (what the user typed) into a resolved RunConfig, once, before ranks start.

Two phases: `validate` is cheap (no data read, no model built) and reports every config problem together;
`materialize` does the work that must happen exactly once per run (train or load the tokenizer, count the
data when the length is given in epochs) and writes OUTPUT/run_config.json for the ranks to read.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.config.run import RUN_CONFIG_FILE, RunConfig, resolve_run
from scaling.config.sections import (
    CheckpointConfig,
    DeepSpeedSource,
    DpoConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
)
from scaling.data.config import DataConfig
from scaling.errors import ConfigError, Problem
from scaling.models.lora_config import LoraConfig

TOKENIZER_DIR = "tokenizer"


@dataclass(kw_only=True)
class RunRequest:
    """The run as the user asked for it, before anything is derived."""

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    checkpoint: CheckpointConfig
    log: LogConfig
    parallel: ParallelConfig
    deepspeed_source: DeepSpeedSource
    world_size: int
    """Processes the run will have."""
    ranks_here: bool = True
    """The ranks run on this machine, so its devices are checked against the run (False: a hostfile names
    other hosts, whose devices this one cannot see)."""
    ranks_placed: bool = False
    """A launcher we did not plan started the ranks (deepspeed, srun, mpirun): each may see only its own
    GPUs, so their number is not checked against the ranks per node."""
    explicit: frozenset[str]
    """Options typed on the command line; the rest are defaults that yield to the DeepSpeed JSON."""
    dpo: DpoConfig = field(default_factory=DpoConfig)
    """The DPO loss's settings (--task dpo)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters over the frozen base (off by default)."""


def validate(request: RunRequest, *, total_steps: int | None = None) -> RunConfig:
    """Resolve everything that needs no model or tokenizer, with a bounded scan of each data source's head
    (on the first resolution: with total_steps, the data has been read already): raises ConfigError listing
    every problem."""
    from scaling.config.device import probe
    from scaling.data.quality import scan_sources
    from scaling.models import describe_source, hf_config_for
    from scaling.models.load import hidden_size_of

    problems: list[Problem] = []
    hidden = heads = kv_heads = hf_config = source = None
    try:
        source = describe_source(request.model.source)
        hf_config = hf_config_for(source)
        hidden = hidden_size_of(hf_config)
        heads = getattr(hf_config, "num_attention_heads", None) or getattr(hf_config, "n_head", None)
        kv_heads = getattr(hf_config, "num_key_value_heads", None)
    except ConfigError as err:
        problems.extend(err.problems)
    if request.model.tokenizer is not None and not Path(request.model.tokenizer).is_dir():
        problems.append(Problem("--tokenizer", "no such tokenizer directory", request.model.tokenizer))
    if total_steps is None:
        problems.extend(scan_sources(request.data, request.model.task))
    steps = total_steps or request.optim.max_steps or 1
    try:
        run = resolve_run(
            model=request.model,
            data=request.data,
            optim=request.optim,
            checkpoint=request.checkpoint,
            log=request.log,
            parallel=request.parallel,
            deepspeed_source=request.deepspeed_source,
            world_size=request.world_size,
            devices=probe() if request.ranks_here else None,
            ranks_here=None if request.ranks_placed else request.parallel.gpus_per_node or request.world_size,
            explicit=request.explicit,
            hidden_size=hidden,
            num_heads=heads,
            kv_heads=kv_heads,
            total_steps=steps,
            dpo=request.dpo,
            lora=request.lora,
        )
    except ConfigError as err:
        problems.extend(err.problems)
        problems.extend(_layout_problems(hf_config, request, request.parallel))
        problems.extend(_lora_problems(hf_config, source, request, request.parallel))
        raise ConfigError(problems, header="cannot start this run") from None
    # The resolved degrees: the DeepSpeed JSON may set them where the options were left at their defaults.
    problems.extend(_layout_problems(hf_config, request, run.parallel))
    problems.extend(_watch_problems(request))
    problems.extend(_lora_problems(hf_config, source, request, run.parallel))
    if problems:
        raise ConfigError(problems, header="cannot start this run")
    return run


def _watch_problems(request: RunRequest) -> list[Problem]:
    """Tracker and early-stopping options that contradict each other or lack what they watch."""
    log, problems = request.log, []
    if not log.tensorboard and "tensorboard" in log.report_to:
        problems.append(
            Problem("--report-to", "lists tensorboard, but --no-tensorboard is given", "tensorboard")
        )
    from scaling.engine.trackers import tracker_problems

    problems += [
        Problem("--report-to", text, ",".join(log.report_to)) for text in tracker_problems(log.trackers)
    ]
    if log.early_stop_patience is not None and not (request.data.eval and log.eval_every):
        problems.append(
            Problem(
                "--early-stop-patience",
                "watches the eval loss of periodic evaluations",
                log.early_stop_patience,
                fix="also pass --eval-data SPEC and --eval-every N",
            )
        )
    return problems


def _layout_problems(hf_config: Any, request: RunRequest, parallel: Any) -> list[Problem]:
    """What the pipeline, AutoTP and Ulysses engines cannot do with this model and task."""
    if hf_config is None or (
        parallel.pipeline_stages == 1 and parallel.tensor_parallel == 1 and parallel.sequence_parallel == 1
    ):
        return []
    from scaling.models.pipe import parallel_problems

    return parallel_problems(
        hf_config,
        task=request.model.task,
        pipeline_stages=parallel.pipeline_stages,
        tensor_parallel=parallel.tensor_parallel,
        sequence_parallel=parallel.sequence_parallel,
        partition=parallel.partition_method,
        on_nan=request.optim.on_nan,
    )


def _lora_problems(hf_config: Any, source: Any, request: RunRequest, parallel: Any) -> list[Problem]:
    """What LoRA cannot do with this model, task, layout or machine (nothing to check without --lora-r)."""
    lora = request.lora
    if not (lora.enabled or lora.four_bit):
        return []
    from scaling.config.device import cuda_available
    from scaling.models.lora import lora_problems

    return lora_problems(
        lora,
        hf_config=hf_config,
        has_weights=source is not None and source.has_weights,
        task=request.model.task,
        parallel=parallel,
        cuda=cuda_available(),
    )


def materialize(request: RunRequest) -> RunConfig:
    """Validate, prepare the tokenizer and the run length, and write OUTPUT/run_config.json."""
    from scaling.checkpoint.resume import prepare_resume
    from scaling.data import build_eval_batches, build_tokenizer, build_train_stream
    from scaling.data.quality import short_source_notices
    from scaling.distributed import Topology

    run = validate(request)
    output = run.output
    # Before anything is written or built: a damaged or foreign checkpoint ends the start here, in seconds.
    prepare_resume(run.checkpoint, output)
    output.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = output / TOKENIZER_DIR
    if tokenizer_dir.is_dir() and any(tokenizer_dir.iterdir()):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    else:
        tokenizer = build_tokenizer(
            run.model.source,
            run.model.tokenizer,
            run.data,
            task=run.model.task,
            vocab_size=run.model.vocab_size,
            save_dir=tokenizer_dir,
        )
        tokenizer.save_pretrained(tokenizer_dir)
    if run.model.task in ("sft", "dpo"):
        _prepare_chat(run, request, tokenizer, tokenizer_dir)
    if run.lora.enabled:
        _check_frozen_vocabulary(run, tokenizer)
    moved = _plan_embeddings(run, tokenizer) if request.model.tokenizer is not None else {}
    request = dataclasses.replace(
        request, model=dataclasses.replace(request.model, tokenizer=str(tokenizer_dir.resolve()))
    )
    topology = Topology(
        world_size=run.world_size,
        tensor_parallel=run.parallel.tensor_parallel,
        pipeline_stages=run.parallel.pipeline_stages,
        sequence_parallel=run.parallel.sequence_parallel,
    )
    stream = build_train_stream(
        run.data,
        tokenizer,
        task=run.model.task,
        micro_batch=run.optim.micro_batch,
        dp_rank=0,
        dp_size=topology.data_parallel,
        seed=run.optim.seed,
    )
    short_source_notices(run.data, tokenizer, run.model.task)
    # Reading the first batch here, before any rank starts, turns a missing, empty or unreadable source
    # into a message on the launching host instead of a failure on every rank after start-up.
    next(stream)
    if run.data.eval:
        build_eval_batches(
            run.data,
            tokenizer,
            task=run.model.task,
            micro_batch=run.optim.micro_batch,
            dp_rank=0,
            dp_size=topology.data_parallel,
            max_batches=1,
        )
    total_steps = run.optim.max_steps
    if total_steps is None:
        per_epoch = stream.steps_per_epoch(run.optim.grad_accum)
        assert run.optim.epochs is not None
        total_steps = max(1, math.ceil(per_epoch * run.optim.epochs))
    run = dataclasses.replace(validate(request, total_steps=total_steps), embedding_transplant=moved)
    write_run_config(run)
    return run


def _plan_embeddings(run: RunConfig, tokenizer: Any) -> dict[str, Any]:
    """A pretrained model given another tokenizer: plan its new embedding rows once, for every rank."""
    import logging

    from scaling.checkpoint.store import atomic_write_text
    from scaling.models.transplant import PLAN_FILE, plan_for_model, record

    plan = plan_for_model(run.model.source, tokenizer, init=run.model.embedding_init)
    if plan is None:
        return {}
    atomic_write_text(run.output / PLAN_FILE, plan.to_json())
    logging.getLogger("scaling").info(
        "embeddings moved to the new tokenizer (%s): %s", run.model.embedding_init, plan.summary()
    )
    return record(plan, run.model.embedding_init)


def _prepare_chat(run: RunConfig, request: RunRequest, tokenizer: Any, tokenizer_dir: Path) -> None:
    """Give the run's tokenizer its chat template (saved, so every rank renders the same) and read every
    conversation before launch: a bad record or a template without an end token stops here, with exit 2."""
    from scaling.data.chat import check_sources, prepare_chat_tokenizer
    from scaling.data.tokenizer import has_tokenizer

    trained_here = request.model.tokenizer is None and not has_tokenizer(request.model.source)
    before = (tokenizer.chat_template, len(tokenizer))
    name = prepare_chat_tokenizer(tokenizer, run.model.chat_template, trained_here=trained_here)
    if (tokenizer.chat_template, len(tokenizer)) != before:
        tokenizer.save_pretrained(tokenizer_dir)
    check_sources(list(run.data.train) + list(run.data.eval), tokenizer, name, run.model.task)


def _check_frozen_vocabulary(run: RunConfig, tokenizer: Any) -> None:
    """LoRA leaves the embeddings frozen: tokens added to the tokenizer (a chat template's) would keep the
    random rows the model is resized with, and the model could never learn to emit them."""
    from scaling.models import describe_source, hf_config_for

    vocab = getattr(hf_config_for(describe_source(run.model.source)), "vocab_size", None)
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        added = tokenizer.convert_ids_to_tokens(list(range(vocab, len(tokenizer))))
        raise ConfigError(
            [
                Problem(
                    "--lora-r",
                    f"the tokenizer has {len(tokenizer)} tokens, the model's frozen embeddings {vocab}: the added "
                    f"{', '.join(map(str, added[:4]))} would stay untrained under LoRA",
                    fix="use a chat template made of tokens the model knows (the tokenizer's own, or "
                    "--chat-template FILE), or train without --lora-r",
                )
            ],
            header="cannot start this run",
        )


def write_run_config(run: RunConfig) -> Path:
    from scaling.checkpoint.store import atomic_write_text

    path = run.output / RUN_CONFIG_FILE
    atomic_write_text(path, run.to_json())
    return path
