"""Commit-marker semantics of checkpoint directories, without any training."""

import json
from pathlib import Path

import pytest

from scaling.checkpoint import store
from scaling.errors import CheckpointError


def fake_save(root: Path, step: int, *, commit: bool = True, payload: bytes = b"weights") -> Path:
    d = root / store.tag_for(step)
    (d / "scaling").mkdir(parents=True)
    (d / "mp_rank_00_model_states.pt").write_bytes(payload * 10)
    (d / "scaling" / "rank00000.pt").write_bytes(b"state")
    if commit:
        store.write_manifest(d, step=step)
        store.publish_latest(store.CheckpointRef(root, d.name))
    return d


def test_manifest_lists_sizes_and_hashes(tmp_path):
    d = fake_save(tmp_path, 5)
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["step"] == 5
    assert manifest["files"]["mp_rank_00_model_states.pt"]["size"] == 70
    assert len(manifest["files"]["scaling/rank00000.pt"]["sha256"]) == 64
    assert store.verify(d)["step"] == 5


def test_uncommitted_save_is_never_latest(tmp_path):
    fake_save(tmp_path, 5)
    fake_save(tmp_path, 10, commit=False)  # killed before the manifest was written
    assert store.read_latest(tmp_path).step == 5
    assert [r.step for r in store.committed(tmp_path)] == [5]
    assert store.resolve_resume("auto", tmp_path).step == 5
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        store.ref_from_path(tmp_path / store.tag_for(10))


def test_truncated_and_corrupt_files_are_named(tmp_path):
    d = fake_save(tmp_path, 5)
    shard = d / "mp_rank_00_model_states.pt"
    shard.write_bytes(b"weights" * 5)
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states\.pt is 35 bytes, manifest says 70"):
        store.verify(d)
    shard.write_bytes(b"WEIGHTS" * 10)
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states\.pt does not match its sha256"):
        store.verify(d)
    store.verify(d, hashes=False)  # sizes alone cannot see a same-size corruption


def test_retention_keeps_last_k_and_latest(tmp_path):
    for step in (1, 2, 3, 4):
        fake_save(tmp_path, step)
    fake_save(tmp_path, 0, commit=False)  # stale interrupted save
    fake_save(tmp_path, 9, commit=False)  # a save in flight, newer than every commit
    removed = store.retain(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == [store.tag_for(0), store.tag_for(1), store.tag_for(2)]
    assert [r.step for r in store.committed(tmp_path)] == [3, 4]
    assert (tmp_path / store.tag_for(9)).exists()


def test_retention_never_deletes_what_latest_names(tmp_path):
    for step in (1, 2, 3):
        fake_save(tmp_path, step)
    store.publish_latest(store.CheckpointRef(tmp_path, store.tag_for(1)))  # e.g. a rollback
    store.retain(tmp_path, keep_last=1)
    assert [r.step for r in store.committed(tmp_path)] == [1, 3]


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "latest"
    store.atomic_write_text(target, "step-00000001\n")
    store.atomic_write_text(target, "step-00000002\n")
    assert target.read_text() == "step-00000002\n"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_resume_from_run_directory(tmp_path):
    fake_save(tmp_path / "checkpoints", 7)
    assert store.ref_from_path(tmp_path).step == 7
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        store.ref_from_path(tmp_path / "missing")
