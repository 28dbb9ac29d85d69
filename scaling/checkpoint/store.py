"""Checkpoint directories that are either complete or ignored.

Layout under the run's `checkpoints/` directory:

    step-00000020/                 DeepSpeed's files (model/optimizer shards of every rank)
    step-00000020/scaling/         ours: rank<r>.pt (data position, RNG, counters), run_config.json, model/
    step-00000020/manifest.json    commit marker: every file with size and sha256, written last by rename
    latest                         name of the newest committed checkpoint, replaced by rename

DeepSpeed's own `latest` is written before its final barrier and not atomically, so we never ask it to
write one and never read it. A directory without `manifest.json` is an interrupted save: it is never loaded
and is removed by the next save.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from scaling.errors import CheckpointError

MANIFEST = "manifest.json"
LATEST = "latest"
BEST = "best"
"""Name of the checkpoint with the lowest eval loss (early stopping); retention never deletes it."""
TAG_PREFIX = "step-"
TRASH_PREFIX = ".deleting-"
OURS = "scaling"


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def step_of(tag: str) -> int:
    return int(tag[len(TAG_PREFIX) :])


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file, fsync, then rename: readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is; without this a power loss can undo it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CheckpointRef:
    """A committed checkpoint: its directory inside a checkpoints root."""

    root: Path
    tag: str

    @property
    def path(self) -> Path:
        return self.root / self.tag

    @property
    def step(self) -> int:
        return step_of(self.tag)

    @property
    def ours(self) -> Path:
        return self.path / OURS


def write_manifest(ckpt_dir: Path, *, step: int, extra: dict | None = None) -> dict:
    """Describe every file of a finished save and commit it. Call once, after all ranks have written."""
    files = {}
    for file in sorted(p for p in ckpt_dir.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = file.relative_to(ckpt_dir).as_posix()
        files[rel] = {"size": file.stat().st_size, "sha256": sha256_of(file)}
    manifest = {"format": 1, "step": step, "files": files, **(extra or {})}
    atomic_write_text(ckpt_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def verify(ckpt_dir: Path, *, hashes: bool = True) -> dict:
    """Check a checkpoint against its manifest; raise CheckpointError naming the first bad file.

    A received checkpoint is untrusted (docs/security.md): besides sizes and hashes, every manifest path must
    stay inside the checkpoint, nothing in it may be a symlink, and every pickled file may only hold data."""
    manifest_path = ckpt_dir / MANIFEST
    refuse_links(ckpt_dir)
    if not manifest_path.is_file():
        raise CheckpointError(f"{ckpt_dir}: incomplete checkpoint (no {MANIFEST}; the save was interrupted)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({err})") from None
    for rel, meta in manifest["files"].items():
        file = contained(ckpt_dir, rel, what=f"{manifest_path} lists")
        if not file.is_file():
            raise CheckpointError(f"{ckpt_dir}: file {rel} listed in the manifest is missing")
        size = file.stat().st_size
        if size != meta["size"]:
            raise CheckpointError(
                f"{ckpt_dir}: file {rel} is {size} bytes, manifest says {meta['size']} (truncated?)"
            )
        if hashes and sha256_of(file) != meta["sha256"]:
            raise CheckpointError(f"{ckpt_dir}: file {rel} does not match its sha256 (corrupt)")
    refuse_code(ckpt_dir)
    return manifest


def contained(root: Path, rel: str, *, what: str) -> Path:
    """`root / rel`, refused unless `rel` is a relative path that stays inside `root` once resolved."""
    path = root / rel
    inside = not Path(rel).is_absolute() and ".." not in Path(rel).parts
    if inside:
        resolved, base = path.resolve(), root.resolve()
        inside = resolved == base or base in resolved.parents
    if not inside:
        raise CheckpointError(f"{what} {rel!r}, which is outside {root}: refused")
    return path


def refuse_links(root: Path) -> None:
    """Refuse a directory that is, or holds, a symlink: reading or copying through one could reach any file
    (an exported model would carry /etc/shadow). `root` itself is the path the user named."""
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            entry = Path(parent) / name
            if entry.is_symlink():
                raise CheckpointError(f"{entry} is a symlink (to {os.readlink(entry)}): refused")


PICKLED_SUFFIXES = (".pt", ".pth", ".bin", ".pkl")


def refuse_code(root: Path) -> None:
    """Refuse a checkpoint whose pickled files ask for anything but tensors, containers and DeepSpeed's state
    classes, read without unpickling (the loaders refuse it again when they read the file)."""
    files = sorted(p for p in root.rglob("*") if p.suffix in PICKLED_SUFFIXES and p.is_file())
    if not files:
        return
    from scaling.compat.safe_load import unsafe_globals

    for file in files:
        bad = unsafe_globals(file)
        if bad:
            raise CheckpointError(
                f"{file}: refused: it would import {', '.join(bad[:3])}, which no checkpoint holds "
                "(a pickle that runs code when loaded; see docs/security.md)"
            )


def is_complete(ckpt_dir: Path) -> bool:
    return (ckpt_dir / MANIFEST).is_file()


def committed(root: Path) -> list[CheckpointRef]:
    """Complete checkpoints under root, oldest first."""
    if not root.is_dir():
        return []
    refs = [
        CheckpointRef(root, d.name)
        for d in root.iterdir()
        if d.is_dir()
        and d.name.startswith(TAG_PREFIX)
        and d.name[len(TAG_PREFIX) :].isdigit()
        and is_complete(d)
    ]
    return sorted(refs, key=lambda r: r.step)


def read_latest(root: Path) -> CheckpointRef | None:
    """The checkpoint `latest` names, which is always committed (it is written only after the manifest)."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    if pointer.is_symlink():
        raise CheckpointError(f"{pointer} is a symlink (to {os.readlink(pointer)}): refused")
    tag = pointer.read_text(encoding="utf-8").strip()
    if not _is_tag(tag):
        raise CheckpointError(f"{pointer} names {tag!r}, not a checkpoint of {root} ({TAG_PREFIX}N): refused")
    ref = CheckpointRef(root, tag)
    if ref.path.is_symlink():
        raise CheckpointError(f"{ref.path} is a symlink (to {os.readlink(ref.path)}): refused")
    if not is_complete(ref.path):
        raise CheckpointError(f"{pointer} names {tag}, which is not a complete checkpoint")
    return ref


def _is_tag(name: str) -> bool:
    return name.startswith(TAG_PREFIX) and name[len(TAG_PREFIX) :].isdigit() and name.isascii()


def publish_latest(ref: CheckpointRef) -> None:
    atomic_write_text(ref.root / LATEST, ref.tag + "\n")


def publish_best(ref: CheckpointRef) -> None:
    atomic_write_text(ref.root / BEST, ref.tag + "\n")


def read_best(root: Path) -> CheckpointRef | None:
    """The checkpoint `best` names, when there is one and it is committed."""
    pointer = root / BEST
    if not pointer.is_file():
        return None
    ref = CheckpointRef(root, pointer.read_text(encoding="utf-8").strip())
    return ref if is_complete(ref.path) else None


def retain(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` committed checkpoints and any interrupted saves older than the
    newest commit. Never deletes what `latest` or `best` names. Returns what was removed."""
    latest = read_latest(root)
    complete = committed(root)
    keep = {r.tag for r in complete[-keep_last:]} if keep_last > 0 else {r.tag for r in complete}
    for pinned in (latest, read_best(root)):
        if pinned is not None:
            keep.add(pinned.tag)
    newest_step = complete[-1].step if complete else -1
    removed = []
    for d in _tagged_dirs(root):
        if d.name in keep:
            continue
        interrupted = not is_complete(d)
        if (interrupted and step_of(d.name) < newest_step) or (not interrupted):
            _remove(d)
            removed.append(d)
    for leftover in root.glob(f"{TRASH_PREFIX}*"):  # deletions a kill interrupted
        shutil.rmtree(leftover, ignore_errors=True)
    return removed


def _remove(directory: Path) -> None:
    # Rename first: a kill during a long rmtree must not leave a half-deleted directory that still
    # looks like a checkpoint (manifest gone, shards present).
    trash = directory.with_name(f"{TRASH_PREFIX}{directory.name}")
    directory.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _tagged_dirs(root: Path) -> Iterable[Path]:
    if not root.is_dir():
        return []
    return [
        d for d in root.iterdir() if d.is_dir() and d.name.startswith(TAG_PREFIX) and d.name[5:].isdigit()
    ]


def resolve_resume(resume: str | None, root: Path) -> CheckpointRef | None:
    """`auto` -> the latest committed checkpoint under root (None when there is none yet); a path -> that
    checkpoint (a run directory, a checkpoints root, or one step directory); None -> start fresh."""
    if resume is None:
        return None
    if resume == "auto":
        return read_latest(root)
    return ref_from_path(Path(resume))


def ref_from_path(path: Path) -> CheckpointRef:
    """Accept a step directory, a checkpoints root (uses `latest`), or a run directory."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if (path / LATEST).is_file():
        ref = read_latest(path)
        assert ref is not None
        return ref
    if path.name.startswith(TAG_PREFIX):
        if not is_complete(path):
            raise CheckpointError(f"{path}: incomplete checkpoint (no {MANIFEST}; the save was interrupted)")
        return CheckpointRef(path.parent, path.name)
    raise CheckpointError(
        f"{path}: not a checkpoint (expected a run directory, checkpoints/ or a step-N directory)"
    )
