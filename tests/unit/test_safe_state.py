"""Data-only checkpoint state (scaling.checkpoint.state_file), the weights-only loader (scaling.compat.safe_load)
and the modes of what we write (scaling.files)."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from scaling.checkpoint.state_file import read_rank_state, write_rank_state
from scaling.compat.safe_load import load_weights_only, unsafe_globals
from scaling.engine.state import rng_state
from scaling.errors import CheckpointError, UserError
from scaling.files import apply_umask, copy_contained


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_rank_state_round_trips_exactly_without_pickle(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    state = {
        "step": 7, "loss_scale": None, "lr": 0.1 + 0.2, "nan": float("inf"), "rng": rng_state(),
        "data": {"carry": [1, 2, 3], "weights": [0.25, 0.75], "pos": np.int64(9)},
        "projection_optim": {"state": {0: {"exp_avg": torch.randn(3, 2), "step": torch.tensor(4.0)}},
                             "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]},
        "__odd__": b"\x00\x01", "bf16": torch.ones(2, dtype=torch.bfloat16),
    }  # fmt: skip
    path = tmp_path / "rank00000.safetensors"
    write_rank_state(path, state)
    back = read_rank_state(path)
    assert back["rng"]["python"] == state["rng"]["python"]  # tuples stay tuples: random.setstate takes them
    random.setstate(back["rng"]["python"])
    np.random.set_state(back["rng"]["numpy"])
    torch.set_rng_state(back["rng"]["torch"])
    assert (back["rng"]["numpy"][1] == state["rng"]["numpy"][1]).all()
    assert back["lr"] == state["lr"] and back["nan"] == float("inf") and back["data"]["pos"].dtype == np.int64
    moments = back["projection_optim"]["state"][0]
    assert torch.equal(moments["exp_avg"], state["projection_optim"]["state"][0]["exp_avg"])
    assert back["projection_optim"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["__odd__"] == b"\x00\x01" and back["bf16"].dtype == torch.bfloat16
    assert b"\x80\x04" not in path.read_bytes()[:64]  # a safetensors header, not a pickle
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # safetensors alone writes 0600


def test_legacy_rank_state_reads_safely_and_a_payload_is_refused(tmp_path):
    legacy = tmp_path / "rank00000.pt"
    torch.save({"step": 3, "rng": rng_state()}, legacy)  # what earlier versions wrote
    assert read_rank_state(legacy)["step"] == 3
    marker = tmp_path / "PWNED"
    torch.save({"step": 3, "x": Payload(marker)}, legacy)
    with pytest.raises(CheckpointError, match=r"rank00000\.pt: refused to load: it asks for posix\.system"):
        read_rank_state(legacy)
    assert not marker.exists()


def test_bare_pickles_are_scanned_and_refused(tmp_path):
    marker = tmp_path / "PWNED"
    bare = tmp_path / "bare.pt"
    bare.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=2))
    assert unsafe_globals(bare) == ["posix.system"]
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert unsafe_globals(legacy) == []
    with pytest.raises(CheckpointError, match="refused"):
        load_weights_only(bare)
    assert not marker.exists()


def test_outputs_get_umask_modes(tmp_path):
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    (out / "w.safetensors").write_bytes(b"x")
    os.chmod(out / "w.safetensors", 0o600)
    (out / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(out / "run.sh", 0o700)
    old = os.umask(0o022)
    try:
        apply_umask(out)
    finally:
        os.umask(old)
    assert [(p.name, p.stat().st_mode & 0o777) for p in sorted([out, *out.iterdir()])] == [
        ("out", 0o755), ("run.sh", 0o755), ("w.safetensors", 0o644)
    ]  # fmt: skip


def test_copy_contained_refuses_links_out_of_the_model_directory(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "shadow").write_text("secret")
    (model / "tokenizer.json").symlink_to(tmp_path / "shadow")
    with pytest.raises(UserError, match="outside"):
        copy_contained(model / "tokenizer.json", tmp_path / "copy.json", model)
    assert not (tmp_path / "copy.json").exists()
    # an HF cache snapshot links into its repository's blobs/: allowed
    repo = tmp_path / "models--x"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "blobs" / "h1").write_text("{}")
    (repo / "snapshots" / "abc" / "tokenizer.json").symlink_to("../../blobs/h1")
    snap = repo / "snapshots" / "abc"
    copy_contained(snap / "tokenizer.json", tmp_path / "ok.json", snap)
    assert (tmp_path / "ok.json").read_text() == "{}" and not (tmp_path / "ok.json").is_symlink()


def test_a_forged_rank_state_is_refused_as_malformed(tmp_path):
    import json

    from safetensors.torch import save_file

    path = tmp_path / "rank00000.safetensors"
    forged = {"format": 1, "state": {"x": {"__npscalar__": "O", "value": 1}}}
    save_file({}, str(path), metadata={"scaling_rank_state": json.dumps(forged)})
    with pytest.raises(CheckpointError, match="malformed rank state"):
        read_rank_state(path)
    save_file({}, str(path), metadata={"other": "{}"})
    with pytest.raises(CheckpointError, match="not a rank state"):
        read_rank_state(path)
