"""Modes of what we write: every output file and directory gets the mode the user's umask gives a newly created
one, whatever wrote it.

Directories assembled in `tempfile.mkdtemp` staging areas (exported models, reshaped checkpoints, compressed
models, trained tokenizers) are created 0700 and safetensors writes its files 0600, while plain writes give
0644 under the usual umask: the same weights were readable by the group in a checkpoint but not in `final/`.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

_lock = threading.Lock()


def current_umask() -> int:
    with _lock:  # the only way to read it is to set it; do it once at a time
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give `path` (a file, or a directory and everything under it) the modes new files get: 0666/0777 less the
    umask, keeping a file's executable bits. Symlinks are left alone (never followed)."""
    mask = current_umask()
    path = Path(path)
    if path.is_symlink():
        return
    if not path.is_dir():
        _chmod(path, mask)
        return
    _chmod(path, mask)
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            entry = Path(parent) / name
            if not entry.is_symlink():
                _chmod(entry, mask)


def _chmod(path: Path, mask: int) -> None:
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode) or mode & 0o111:
        os.chmod(path, 0o777 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def copy_contained(source: Path, target: Path, root: Path) -> None:
    """Copy the file `source` of the directory `root` to `target`, refusing a symlink that leads out of `root`.

    A model directory may hold links to its own files, and a Hugging Face cache snapshot links every file to
    its repository's `blobs/` (`snapshots/REV/x -> ../../blobs/HASH`); a link anywhere else could make an
    output carry any file of this host (a received model's `tokenizer.json -> /etc/shadow`)."""
    from scaling.errors import UserError

    if source.is_symlink():
        resolved, base = source.resolve(), Path(root).resolve()
        blobs = base.parent.parent / "blobs" if base.parent.name == "snapshots" else None
        if not any(r is not None and r in resolved.parents for r in (base, blobs)):
            raise UserError(f"{source} is a symlink to {resolved}, outside {root}: refused")
    import shutil

    shutil.copyfile(source, target)
