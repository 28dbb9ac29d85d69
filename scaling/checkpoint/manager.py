"""Save and load complete training checkpoints: DeepSpeed's engine state plus our per-rank state.

All ranks call `save`/`load`; only the writer commits (manifest, `latest`, retention): rank 0, or each node's
local rank 0 for its node's copy when the nodes keep their checkpoints on their own disks.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaling.checkpoint.state_file import (
    find_rank_file,
    rank_file,
    rank_files,
    read_rank_state,
    write_rank_state,
)
from scaling.checkpoint.store import (
    CheckpointRef,
    atomic_write_text,
    is_complete,
    publish_latest,
    retain,
    tag_for,
    verify,
    write_manifest,
)
from scaling.errors import CheckpointError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MODEL_DIR = "model"  # inside OURS: HF config + tokenizer, so a checkpoint exports without the run directory


@dataclass
class CheckpointManager:
    """Saves into `root` (OUTPUT/checkpoints) and keeps the newest `keep_last` committed checkpoints."""

    root: Path
    rank: int
    keep_last: int
    writer: bool | None = None
    """Whether this rank writes the files every rank's checkpoint shares and commits (manifest, `latest`,
    retention): rank 0 by default; each node's local rank 0 when every node keeps its own checkpoints."""

    def __post_init__(self) -> None:
        if self.writer is None:
            self.writer = self.rank == 0

    def save(
        self,
        engine: Any,
        *,
        step: int,
        rank_state: dict[str, Any],
        run_config_json: str,
        hf_config: Any,
        tokenizer: PreTrainedTokenizerBase,
        barrier: Any,
        before_commit: Any = None,
        on_every_rank: Any = None,
    ) -> CheckpointRef:
        """`before_commit(ref)`, when given, runs on every rank after all state is written and before the
        manifest, so what it adds (e.g. gathered tensor-parallel weights) is covered by the commit.
        `on_every_rank(flag)`: whether `flag` holds on every rank (collective), for per-node directories."""
        ref = CheckpointRef(self.root, tag_for(step))
        done = is_complete(ref.path)
        if on_every_rank is not None:  # a node one commit behind saves again, and so must all the others
            done = on_every_rank(done)
        if done:  # this step is already committed (e.g. saved just before a resume)
            return ref
        if self.writer:
            self.root.mkdir(parents=True, exist_ok=True)
            if ref.path.exists():  # an interrupted save of this very step: start it over
                shutil.rmtree(ref.path)  # no manifest, so never mistaken for a checkpoint meanwhile
        barrier()
        engine.save_checkpoint(
            str(self.root), tag=ref.tag, client_state={"scaling_step": step}, save_latest=False
        )
        ref.ours.mkdir(parents=True, exist_ok=True)
        write_rank_state(rank_file(ref.ours, self.rank), rank_state)
        if self.writer:
            atomic_write_text(ref.ours / "run_config.json", run_config_json)
            model_dir = ref.ours / MODEL_DIR
            model_dir.mkdir(exist_ok=True)
            hf_config.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
        if before_commit is not None:
            before_commit(ref)
        barrier()  # every rank's files are on disk before the commit marker describes them
        if self.writer:
            write_manifest(ref.path, step=step)
            publish_latest(ref)
            retain(self.root, self.keep_last)
        barrier()
        return ref

    def load(self, engine: Any, ref: CheckpointRef, *, load_optimizer: bool = True) -> dict[str, Any]:
        """Restore engine state and return this rank's own state."""
        from scaling.compat.deepspeed import universal_checkpoint_loading
        from scaling.compat.safe_load import restricted_torch_load

        if self.writer:
            verify(ref.path, hashes=True)
        own_file = find_rank_file(ref.ours, self.rank)
        if own_file is None:
            saved = rank_files(ref.ours)
            raise CheckpointError(
                f"{ref.path} was saved by {len(saved)} rank(s) and has no state for rank {self.rank}; "
                "resume with the same number of processes, or reshape it (scaling checkpoint reshape)"
            )
        # A reshaped checkpoint (scaling checkpoint reshape) may be in DeepSpeed's universal format, which the
        # engine loads only with its load_universal switch on; the switch is read at load time.
        record = _reshape_record(ref) or {}
        universal = bool(record.get("universal"))
        stage = engine.zero_optimization_stage()
        if universal and (stage == 0 or (stage == 3 and record.get("zero_stage") != 3)):
            raise CheckpointError(
                f"{ref.path} was reshaped from a ZeRO-{record.get('zero_stage')} run; it resumes under ZeRO-1/2"
                + (" or 3" if record.get("zero_stage") == 3 else "")
                + f", not ZeRO-{stage}"
            )
        with universal_checkpoint_loading(engine, universal), restricted_torch_load():
            path, _ = engine.load_checkpoint(
                str(ref.root),
                tag=ref.tag,
                load_optimizer_states=load_optimizer,
                load_lr_scheduler_states=load_optimizer,
            )
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {ref.path}")
        return read_rank_state(own_file)


def _reshape_record(ref: CheckpointRef) -> dict[str, Any] | None:
    record = ref.ours / "reshape.json"  # scaling.checkpoint.reshape.RESHAPE_FILE
    return json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None


def saved_run_config(ref: CheckpointRef) -> dict[str, Any]:
    return json.loads((ref.ours / "run_config.json").read_text(encoding="utf-8"))
