"""Reshape a training checkpoint for another parallel layout (data-parallel size, pipeline stages).

What is converted, and how (every result is in DeepSpeed's universal format unless said otherwise: whole
fp32 parameters and Adam moments per parameter, which the resuming engine partitions for its own layout):

- ZeRO-1/2 (with or without a pipeline): DeepSpeed's `ds_to_universal`, run in this process. A pipeline
  checkpoint resumed without a pipeline has its parameters renamed from pipeline names (`<layer>.inner.<name>`)
  to HF names, and its module weights merged from the layer files.
- ZeRO-3: DeepSpeed's converter fails in 0.19.8 (DeepSpeed#5822), so we convert: the fp32 partitions and
  both Adam moments are gathered with zero_to_fp32's ZeRO-3 merge and written in the universal layout. The
  result resumes under ZeRO-3 or ZeRO-1/2 (a move across ZeRO families). A ZeRO-1/2 checkpoint cannot
  resume under ZeRO-3 (DeepSpeed's universal files lack what the ZeRO-3 loader reads).
- ZeRO-0: DeepSpeed keeps the whole module and optimizer in one file that any data-parallel size loads; the
  files are copied unchanged.
- Sequence parallelism changes nothing in the files: ZeRO partitions over data x sequence ranks, so a
  sequence-parallel run converts like a data-parallel run of its world size, and the target's ZeRO ranks are
  its data x sequence ranks.
- Refused with the reason: tensor-parallel checkpoints, new pipeline splits (a pipeline resumes with its own
  number of stages or with none), ZeRO-0 pipelines that change stages.

Our per-rank state (`scaling/rank<r>.safetensors`) is rebuilt for the target world. Preserved exactly: the step, the
optimizer and scheduler state, the non-finite-skip counter. The data position is
preserved as a global sample count: the samples all source data-parallel ranks had consumed are divided
evenly among the new data-parallel ranks, and each new rank's stream (sharded for the new size) is advanced
by its share (rounded up to whole micro-batches). The new ranks therefore continue at the same point of the
epoch, but not with the same sample order as the source layout would have produced; RNG state comes from
source rank 0 (dropout is reseeded from the position at every step anyway).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.checkpoint.manager import MODEL_DIR, saved_run_config
from scaling.checkpoint.state_file import rank_file, rank_files, read_rank_state, write_rank_state
from scaling.checkpoint.store import (
    MANIFEST,
    OURS,
    CheckpointRef,
    atomic_write_text,
    publish_latest,
    ref_from_path,
    verify,
    write_manifest,
)
from scaling.compat.safe_load import load_weights_only, restricted_torch_load
from scaling.distributed.topology import Topology
from scaling.errors import CheckpointError
from scaling.files import apply_umask

RESHAPE_FILE = "reshape.json"
"""Inside `scaling/`: the source and target layouts, and whether DeepSpeed must load it as universal."""


@dataclass(frozen=True)
class Layout:
    """A parallel layout of a run."""

    world_size: int
    """Processes."""
    pipeline_stages: int = 1
    """Pipeline stages."""
    tensor_parallel: int = 1
    """AutoTP degree."""
    micro_batch: int | None = None
    """Samples per rank per micro-step (None: as in the source run)."""
    sequence_parallel: int = 1
    """Ulysses degree."""

    @property
    def topology(self) -> Topology:
        """These degrees as a layout, unchecked: `check_reshape` reports what is wrong with it."""
        return Topology.unchecked(self)

    @property
    def data_parallel(self) -> int:
        return self.topology.data_parallel

    @property
    def zero_ranks(self) -> int:
        """Ranks ZeRO partitions over: data-parallel ranks and their sequence peers."""
        return self.topology.zero_partition

    def same_processes(self, other: Layout) -> bool:
        """Whether `other` runs this layout (the micro-batch aside)."""
        fields = ("world_size", "pipeline_stages", "tensor_parallel", "sequence_parallel")
        return all(getattr(self, name) == getattr(other, name) for name in fields)

    def describe(self) -> str:
        degrees = [f"world {self.world_size}"] + [
            f"{label} {value}"
            for label, value in (
                ("pp", self.pipeline_stages),
                ("tp", self.tensor_parallel),
                ("sp", self.sequence_parallel),
            )
            if value > 1
        ]
        return ", ".join(degrees)


def source_layout(run: dict[str, Any]) -> Layout:
    parallel = run.get("parallel", {})
    return Layout(
        world_size=int(run["world_size"]),
        pipeline_stages=int(parallel.get("pipeline_stages", 1)),
        tensor_parallel=int(parallel.get("tensor_parallel", 1)),
        micro_batch=int(run["optim"]["micro_batch"]),
        sequence_parallel=int(parallel.get("sequence_parallel", 1)),
    )


def check_reshape(source: Layout, target: Layout, zero_stage: int) -> list[str]:
    """Why this conversion cannot be done (empty: it can)."""
    topology = target.topology
    reasons = [f"target layout: {problem.render()}" for problem in topology.problems()]
    if source.tensor_parallel > 1 or target.tensor_parallel > 1:
        reasons.append(
            "tensor-parallel checkpoints cannot be reshaped (resume with the same --tensor-parallel)"
        )
    if target.pipeline_stages > 1 and target.pipeline_stages != source.pipeline_stages:
        reasons.append(
            f"a checkpoint of {source.pipeline_stages} pipeline stage(s) can resume with {source.pipeline_stages} "
            "or 1 stage(s), not with a new pipeline split"
        )
    if zero_stage == 0 and source.pipeline_stages != target.pipeline_stages:
        reasons.append("ZeRO-0 pipeline checkpoints cannot change the number of stages (save with ZeRO-1)")
    return reasons


def reshape_checkpoint(checkpoint: Path, output: Path, target: Layout) -> CheckpointRef:
    """Write a copy of `checkpoint` under the checkpoints root `output` that resumes on `target`.

    The copy is assembled beside `output`'s step directory and renamed into place once complete.
    """
    ref = ref_from_path(Path(checkpoint))
    verify(ref.path, hashes=True)
    run = saved_run_config(ref)
    source = source_layout(run)
    stage = int(run["deepspeed"].get("zero_optimization", {}).get("stage", 0))
    reasons = check_reshape(source, target, stage)
    if reasons:
        raise CheckpointError(f"{ref.path}: cannot reshape to {target}: " + "; ".join(reasons))
    if target.micro_batch is None:
        target = dataclasses.replace(target, micro_batch=source.micro_batch)

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    final = output / ref.tag
    staging = Path(tempfile.mkdtemp(prefix=f".{ref.tag}.", dir=output))
    try:
        with restricted_torch_load():  # DeepSpeed's converters load with weights_only=False
            universal = _convert(ref, staging, source, target, stage)
        ours = staging / OURS
        ours.mkdir()
        shutil.copy2(ref.ours / "run_config.json", ours / "run_config.json")
        shutil.copytree(ref.ours / MODEL_DIR, ours / MODEL_DIR, symlinks=True)  # verify() refused links
        _write_rank_states(ref, run, source, target, ours)
        record = {
            "universal": universal,
            "zero_stage": stage,
            "source": source.__dict__,
            "target": target.__dict__,
            "from": str(ref.path),
        }
        atomic_write_text(ours / RESHAPE_FILE, json.dumps(record, indent=1) + "\n")
        write_manifest(staging, step=ref.step, extra={"reshaped_from": str(ref.path)})
        apply_umask(staging)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    new_ref = CheckpointRef(output, ref.tag)
    publish_latest(new_ref)
    return new_ref


def _convert(ref: CheckpointRef, staging: Path, source: Layout, target: Layout, stage: int) -> bool:
    """DeepSpeed's files of the target layout into `staging`; returns whether they are universal."""
    if stage == 3:
        _universal_from_zero3(ref.path, staging, zero3_ranks=target.zero_ranks)
    elif stage > 0:
        _to_universal(ref.path, staging)
        if source.pipeline_stages > 1 and target.pipeline_stages == 1:
            _unpipe(ref, staging)
        elif source.pipeline_stages > 1:
            for layer in ref.path.glob("layer_*-model_states.pt"):
                shutil.copy2(layer, staging / layer.name)
    else:
        for item in ref.path.iterdir():
            if item.name not in (OURS, MANIFEST) and item.is_file():
                shutil.copy2(item, staging / item.name)
    return stage > 0


def _to_universal(source_dir: Path, out_dir: Path) -> None:
    """DeepSpeed's ds_to_universal in this process, one worker (no process pool)."""
    from deepspeed.checkpoint import ds_to_universal

    argv = sys.argv
    sys.argv = [
        "ds_to_universal",
        "--input_folder", str(source_dir),
        "--output_folder", str(out_dir),
        "--num_extract_workers", "1",
        "--num_merge_workers", "1",
        "--inject_missing_state",
    ]  # fmt: skip
    try:
        args = ds_to_universal.parse_arguments()
    finally:
        sys.argv = argv
    try:
        # DeepSpeed reports progress on stdout; keep ours (and a caller's) clean.
        with contextlib.redirect_stdout(sys.stderr):
            ds_to_universal.main(args)
    except (AssertionError, KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{source_dir}: DeepSpeed's universal conversion failed: {err}") from None
    # It also writes `latest_universal` beside the output, naming our staging directory: never read by us
    # (we always load by tag) and misleading once the directory is renamed.
    (out_dir.parent / "latest_universal").unlink(missing_ok=True)


def _universal_from_zero3(source_dir: Path, out_dir: Path, zero3_ranks: int = 0) -> None:
    """Our own universal conversion of a ZeRO-3 checkpoint (DeepSpeed's fails in 0.19.8, DeepSpeed#5822).

    ZeRO-3 keeps, per rank, one flat fp32 partition per parameter sub-group, and Adam's moments in the same
    layout. DeepSpeed's zero_to_fp32 already knows how to gather those partitions into whole parameters; we
    run it on the fp32 weights and on each moment, and write DeepSpeed's universal layout: per parameter
    `zero/<name>/{fp32,exp_avg,exp_avg_sq,step}.pt`, the optimizer's global state, and one model-states file
    holding the consolidated module. The target engine (ZeRO-1/2 or 3, any data-parallel size) partitions it.
    """
    import deepspeed
    import torch

    from scaling.compat.deepspeed import Zero3Checkpoint

    checkpoint = Zero3Checkpoint.read(source_dir)
    optim = [load_weights_only(f)["optimizer_state_dict"] for f in checkpoint.optim_files]
    gathered = checkpoint.merge

    fp32 = gathered([o["fp32_flat_groups"] for o in optim])
    inner = [o["optimizer_state_dict"] for o in optim]
    groups = len(optim[0]["fp32_flat_groups"])
    moments = {
        key: gathered([[rank["state"][g][key].flatten() for g in range(groups)] for rank in inner])
        for key in ("exp_avg", "exp_avg_sq")
    }
    step = inner[0]["state"][0]["step"]
    zero = out_dir / "zero"
    for name, weight in fp32.items():
        folder = zero / name
        folder.mkdir(parents=True)
        torch.save({"param": weight, "cat_dim": 0}, folder / "fp32.pt")
        for key, values in moments.items():
            torch.save({"param": values[name], "cat_dim": 0}, folder / f"{key}.pt")
        torch.save(torch.as_tensor(step, dtype=torch.float32), folder / "step.pt")
    first = optim[0]
    torch.save(
        {
            "loss_scaler": first.get("loss_scaler"),
            "dynamic_loss_scale": first.get("dynamic_loss_scale", False),
            "overflow": first.get("overflow", False),
            "ds_version": deepspeed.__version__,
            "param_groups": inner[0]["param_groups"],
            # where a ZeRO-3 engine reads the step and hyperparameters
            "optimizer_state_dict": {"state": {0: {"step": step}}, "param_groups": inner[0]["param_groups"]},
        },
        zero / "optimizer_state.pt",
    )
    states = load_weights_only(checkpoint.model_files[0])
    module = dict(fp32)
    for tied, source in checkpoint.shared_params:
        if source in module:
            module[tied] = module[source]
    states["module"] = module
    torch.save(states, out_dir / "mp_rank_00_model_states.pt")
    # A ZeRO-3 engine looks for its model states under its own data-parallel rank's name.
    for rank in range(zero3_ranks):
        torch.save(states, out_dir / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")


def _unpipe(ref: CheckpointRef, out_dir: Path) -> None:
    """Turn a universal pipeline checkpoint into one a plain (unpipelined) engine loads: HF parameter names,
    and the merged module weights in the single model-states file."""
    import torch
    from transformers import AutoConfig

    from scaling.checkpoint.export import consolidated_state_dict
    from scaling.models.pipe import hf_prefixes, pipe_to_hf_name

    config = AutoConfig.from_pretrained(ref.ours / MODEL_DIR, local_files_only=True)
    layout = hf_prefixes(config)
    zero = out_dir / "zero"
    for folder in sorted(p for p in zero.iterdir() if p.is_dir()):
        folder.rename(zero / pipe_to_hf_name(folder.name, layout))
    states_files = sorted(out_dir.glob("mp_rank_*_model_states.pt"))
    states = load_weights_only(states_files[0])
    states["module"] = consolidated_state_dict(ref)
    states["mp_world_size"] = 1
    states.pop("param_shapes", None)  # pipeline names; the engine derives its own
    for file in states_files:
        file.unlink()
    torch.save(states, out_dir / "mp_rank_00_model_states.pt")


def _write_rank_states(
    ref: CheckpointRef, run: dict[str, Any], source: Layout, target: Layout, ours: Path
) -> None:
    saved = [read_rank_state(f) for f in rank_files(ref.ours)]
    if len(saved) != source.world_size:
        raise CheckpointError(f"{ref.path}: {len(saved)} rank files for a world of {source.world_size}")
    # One state per data-parallel rank. Ranks are ordered pipeline-outermost, so the first matches are the
    # first stage's, which are the ranks that read data.
    by_dp: dict[int, dict[str, Any]] = {}
    for state in saved:
        by_dp.setdefault(int(state["dp_rank"]), state)
    consumed_samples = sum(int(s["data"]["batches"]) for s in by_dp.values()) * int(source.micro_batch or 1)
    micro_batch = target.micro_batch
    assert micro_batch is not None  # reshape() fills it from the source
    per_rank_batches = math.ceil(consumed_samples / (target.data_parallel * micro_batch))
    tokens = sum(int(s["tokens_seen"]) for s in by_dp.values())
    data_states = _advanced_streams(ref, run, target, per_rank_batches, micro_batch)
    base = saved[0]
    topology = Topology(
        world_size=target.world_size,
        tensor_parallel=target.tensor_parallel,
        pipeline_stages=target.pipeline_stages,
        sequence_parallel=target.sequence_parallel,
    )
    for rank in range(target.world_size):
        dp_rank = topology.data_rank(rank)
        state = dict(base)
        state.update(
            data=data_states[dp_rank],
            world_size=target.world_size,
            dp_rank=dp_rank,
            tokens_seen=tokens // target.data_parallel,
            reshaped={"consumed_samples": consumed_samples, "micro_batches_per_rank": per_rank_batches},
        )
        write_rank_state(rank_file(ours, rank), state)


def _advanced_streams(
    ref: CheckpointRef, run: dict[str, Any], target: Layout, batches: int, micro_batch: int
) -> list[dict]:
    """The data-stream state of each new data-parallel rank after `batches` micro-batches."""
    from transformers import AutoTokenizer

    from scaling.config.run import RunConfig
    from scaling.data import build_train_stream

    config = RunConfig.from_dict(run)
    tokenizer = AutoTokenizer.from_pretrained(ref.ours / MODEL_DIR, local_files_only=True)
    states = []
    for dp_rank in range(target.data_parallel):
        stream = build_train_stream(
            config.data,
            tokenizer,
            task=config.model.task,
            micro_batch=micro_batch,
            dp_rank=dp_rank,
            dp_size=target.data_parallel,
            seed=config.optim.seed,
        )
        for _ in range(batches):
            next(stream)
        states.append(stream.state_dict())
    return states


def reshape_record(ref: CheckpointRef) -> dict[str, Any] | None:
    path = ref.ours / RESHAPE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
