"""Which checkpoint a run resumes from, checked before it costs work.

Before launch (`prepare_resume`, on the launching host or rank 0): stray temporary files of an interrupted
commit are removed; `--resume auto` takes the newest *committed* checkpoint (by manifest, so a `latest` that is
missing or one behind after a kill is repaired), verifies it (sizes always, hashes when affordable) and falls
back past damaged ones, each moved to `checkpoints/corrupt/` with a one-line notice; `--resume PATH` to a
damaged checkpoint is refused with the verify result and the command that uses the previous one. A fresh
run into a directory that holds committed checkpoints is refused. Once a resume from an older checkpoint of
this very run has loaded, the newer ones move to `checkpoints/superseded/` (`supersede_newer`): they belong
to the abandoned continuation, and leaving them would make `latest`, retention and later resumes pick them.

On the ranks (`verify_share`): every rank checks every size and hashes its share of the files (balanced by
size, so the hashing runs in parallel), and all ranks see every rank's result before anyone loads, so a
corrupt shard on any rank redirects (auto) or ends (PATH) the whole job at once instead of hanging a peer.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from scaling.checkpoint import store
from scaling.checkpoint.store import CheckpointRef
from scaling.errors import CheckpointError, UserError

if TYPE_CHECKING:
    from scaling.config.sections import CheckpointConfig

logger = logging.getLogger(__name__)

HASH_BEFORE_LAUNCH_BYTES = 512 * 2**20
"""Checkpoints up to this size are hashed before launch too (~1 s); larger ones by the ranks in parallel."""
SUPERSEDED_DIR = "superseded"
CHECKPOINTS = "checkpoints"
RUN_FILES = ("metrics.jsonl", "tensorboard", "reports")
"""What --overwrite removes beside checkpoints/: the old run's records (its resolved config is rewritten)."""


def prepare_resume(cfg: CheckpointConfig, output: Path) -> CheckpointRef | None:
    """Settle, before any rank starts, which checkpoint the run resumes from (None: a fresh start)."""
    root = output / CHECKPOINTS
    remove_stray_temp(root)
    if cfg.resume is None:
        _fresh_start(root, output, overwrite=cfg.overwrite)
        return None
    if cfg.resume == "auto":
        return newest_sound(root)
    ref = store.ref_from_path(Path(cfg.resume))
    problem = check(ref, hashes=affordable(ref))
    if problem is not None:
        raise CheckpointError(f"cannot resume: {problem}\n{previous_hint(ref)}")
    return ref


def remove_stray_temp(root: Path) -> None:
    """Temporary files of an atomic write a kill interrupted (e.g. `.latest.tmp.PID`): never read, only clutter."""
    if root.is_dir():
        for stray in root.glob(f".{store.LATEST}.tmp.*"):
            stray.unlink(missing_ok=True)


def _fresh_start(root: Path, output: Path, *, overwrite: bool) -> None:
    done = store.committed(root)
    if not done:
        return
    if not overwrite:
        raise UserError(
            f"{output} already holds checkpoints of a run (newest: {done[-1].tag}); continue it with "
            "--resume auto, choose another --output, or pass --overwrite to delete them and start over"
        )
    logger.warning(
        "--overwrite: deleting %d checkpoint(s) and the records of the run in %s", len(done), output
    )
    shutil.rmtree(root)
    for name in RUN_FILES:
        path = output / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def newest_sound(root: Path) -> CheckpointRef | None:
    """The newest committed checkpoint that verifies, with `latest` repaired to name it; damaged ones on the
    way are moved to corrupt/, each with a notice. None when there is no checkpoint yet."""
    candidates = store.committed(root)
    if not candidates:
        return None
    for ref in reversed(candidates):
        problem = check(ref, hashes=affordable(ref))
        if problem is None:
            repair_latest(ref)
            return ref
        skip_damaged(ref, problem)
    raise CheckpointError(
        f"every checkpoint in {root} failed verification (moved to {root / store.CORRUPT_DIR}); "
        "start over without --resume"
    )


def skip_damaged(ref: CheckpointRef, problem: str) -> Path:
    """Move a damaged checkpoint to corrupt/ and point `latest` at the newest one left (one-line notice)."""
    aside = store.quarantine(ref, problem)
    logger.warning("--resume auto: skipping %s (%s); moved to %s", ref.tag, problem, aside)
    left = store.committed(ref.root)
    if left:
        store.publish_latest(left[-1])
    else:
        (ref.root / store.LATEST).unlink(missing_ok=True)
    return aside


def repair_latest(ref: CheckpointRef) -> None:
    """Make `latest` name `ref`, saying so when it named something else or nothing."""
    pointer = ref.root / store.LATEST
    named = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
    if named == ref.tag:
        return
    was = f"named {named}" if named else "was missing"
    logger.warning("%s %s; the newest sound checkpoint is %s, resuming from it", pointer, was, ref.tag)
    store.publish_latest(ref)


def supersede_newer(ref: CheckpointRef, root: Path) -> list[Path]:
    """Once a resume from `ref` has loaded: move the checkpoints of `root` (this run's) newer than `ref`, the
    continuation it abandons, aside to superseded/."""
    if not root.is_dir() or ref.root.resolve() != root.resolve():
        return []
    moved = []
    for newer in store.committed(ref.root):
        if newer.step <= ref.step:
            continue
        aside = ref.root / SUPERSEDED_DIR
        aside.mkdir(exist_ok=True)
        target = aside / newer.tag
        if target.exists():
            shutil.rmtree(target)  # an older abandoned copy of the same step
        newer.path.rename(target)
        moved.append(target)
        logger.warning("resuming from %s: moved the newer %s to %s", ref.tag, newer.tag, target)
    if moved:
        store.publish_latest(ref)
    return moved


def check(ref: CheckpointRef, *, hashes: bool) -> str | None:
    """What verification finds wrong (None: nothing)."""
    try:
        store.verify(ref.path, hashes=hashes)
    except CheckpointError as err:
        return str(err)
    return None


def affordable(ref: CheckpointRef) -> bool:
    try:
        return total_bytes(ref) <= HASH_BEFORE_LAUNCH_BYTES
    except (OSError, ValueError, KeyError):
        return True  # an unreadable manifest: verify says what is wrong, hashing never starts


def total_bytes(ref: CheckpointRef) -> int:
    import json

    manifest = json.loads((ref.path / store.MANIFEST).read_text(encoding="utf-8"))
    return sum(int(meta["size"]) for meta in manifest["files"].values())


def previous_hint(ref: CheckpointRef) -> str:
    """How to resume from the newest sound checkpoint older than `ref` (sizes checked)."""
    older = [r for r in store.committed(ref.root) if r.step < ref.step]
    for candidate in reversed(older):
        if store.size_problem(candidate.path) is None:
            return (
                f"the previous checkpoint is {candidate.tag}; resume from it with:\n  "
                + same_command(resume=str(candidate.path))
                + "\n(--resume auto skips damaged checkpoints by itself)"
            )
    return "there is no older sound checkpoint; start over without --resume"


def same_command(*, resume: str) -> str:
    """This command line with `--resume` set to `resume` when it is `scaling ...`; else the option alone (a
    rank entry's or a launcher's argv is not what the user typed)."""
    argv = list(sys.argv)
    program = Path(argv[0]) if argv else Path()
    typed = program.name == "scaling" or (program.name == "__main__.py" and program.parent.name == "scaling")
    if not typed:
        return f"the same command with --resume {shlex.quote(resume)}"
    out = ["scaling"]
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            out.append(arg)
    return shlex.join([*out, "--resume", resume])


# -- on the ranks ----------------------------------------------------------------------------------------


_OWNER = re.compile(r"(?:zero_pp_rank_(\d+)_|/rank(\d{5})\.\w+$)")
"""Names that say which rank wrote a file: DeepSpeed's ZeRO shards (data-parallel rank) and our rank states."""


def hash_shares(sizes: dict[str, int], world: int) -> list[list[str]]:
    """Files per rank: a rank's own shards (by name) to that rank, then the rest largest first to the least
    loaded rank. Every file is hashed exactly once and the work is roughly balanced."""
    loads = [0] * world
    shares: list[list[str]] = [[] for _ in range(world)]
    rest = []
    for rel in sorted(sizes):
        owner = _OWNER.search("/" + rel)
        if owner is None:
            rest.append(rel)
            continue
        rank = int(owner.group(1) or owner.group(2)) % world
        shares[rank].append(rel)
        loads[rank] += sizes[rel]
    for rel in sorted(rest, key=lambda name: (-sizes[name], name)):
        rank = loads.index(min(loads))
        shares[rank].append(rel)
        loads[rank] += sizes[rel]
    return shares


def verify_share(ref: CheckpointRef, rank: int, world: int) -> str | None:
    """This rank's part of verifying `ref`: every size, and the sha256 of its share of the files."""
    try:
        manifest = store.verify(ref.path, hashes=False)
    except CheckpointError as err:
        return str(err)
    sizes = {rel: int(meta["size"]) for rel, meta in manifest["files"].items()}
    for rel in hash_shares(sizes, world)[rank]:
        try:
            digest = store.sha256_of(ref.path / rel)
        except OSError as err:
            return f"{ref.path}: file {rel} cannot be read ({err})"
        if digest != manifest["files"][rel]["sha256"]:
            return f"{ref.path}: file {rel} does not match its sha256 (corrupt)"
    return None
