"""Which checkpoint a run resumes from, and what happens to damaged ones, without any training."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from scaling.checkpoint import resume, store
from scaling.checkpoint.manager import SaveFailed, naming_write_errors
from scaling.config.sections import CheckpointConfig
from scaling.engine.metrics import drop_records_after
from scaling.engine.step_window import SigtermFlag
from scaling.errors import CheckpointError, UserError
from scaling.launch import status


def fake_save(root: Path, step: int, *, ranks: int = 2, publish: bool = True) -> store.CheckpointRef:
    d = root / store.tag_for(step)
    (d / "scaling").mkdir(parents=True)
    for rank in range(ranks):
        (d / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(bytes([step, rank]) * 500)
        (d / "scaling" / f"rank{rank:05d}.pt").write_bytes(b"state%d" % rank)
    (d / "mp_rank_00_model_states.pt").write_bytes(b"weights" * 300)
    store.write_manifest(d, step=step)
    ref = store.CheckpointRef(root, d.name)
    if publish:
        store.publish_latest(ref)
    return ref


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def config(tmp_path: Path, resume_from: str | None, **extra) -> CheckpointConfig:
    return CheckpointConfig(output=str(tmp_path), resume=resume_from, **extra)


def test_auto_skips_a_truncated_latest_moves_it_aside_and_repairs_latest(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    for step in (10, 20, 33):
        fake_save(root, step)
    truncate(root / store.tag_for(33) / "mp_rank_00_model_states.pt")
    with caplog.at_level(logging.WARNING, logger="scaling"):
        ref = resume.prepare_resume(config(tmp_path, "auto"), tmp_path)
    assert ref is not None and ref.step == 20
    assert store.read_latest(root).step == 20
    assert [r.step for r in store.committed(root)] == [10, 20]
    aside = root / "corrupt" / store.tag_for(33)
    assert (aside / "mp_rank_00_model_states.pt").is_file()  # moved, never deleted
    assert "manifest says" in (root / "corrupt" / f"{store.tag_for(33)}.reason.txt").read_text()
    notices = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(notices) == 1 and store.tag_for(33) in notices[0] and "truncated" in notices[0]


def test_auto_finds_the_newest_commit_when_latest_is_missing_or_behind(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (5, 10, 15):
        fake_save(root, step)
    (root / store.LATEST).unlink()
    (root / ".latest.tmp.4242").write_text(store.tag_for(15))  # a kill between the write and the rename
    assert resume.prepare_resume(config(tmp_path, "auto"), tmp_path).step == 15
    assert store.read_latest(root).step == 15
    assert not list(root.glob(".latest.tmp.*"))
    store.publish_latest(store.CheckpointRef(root, store.tag_for(10)))  # one behind
    assert store.resolve_resume("auto", root).step == 15
    assert resume.prepare_resume(config(tmp_path, "auto"), tmp_path).step == 15
    assert store.read_latest(root).step == 15


def test_auto_with_every_checkpoint_damaged_refuses_instead_of_starting_over(tmp_path):
    root = tmp_path / "checkpoints"
    truncate(fake_save(root, 5).path / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointError, match=r"every checkpoint .* failed verification"):
        resume.prepare_resume(config(tmp_path, "auto"), tmp_path)
    assert (root / "corrupt" / store.tag_for(5)).is_dir()


def test_resume_path_to_a_damaged_checkpoint_names_the_problem_and_the_previous_one(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    fake_save(root, 10)
    bad = fake_save(root, 20)
    flip(bad.path / "zero_pp_rank_1_mp_rank_00_optim_states.pt")  # same size: only the hash sees it
    monkeypatch.setattr(
        "sys.argv", ["/venv/bin/scaling", "train", "--output", str(tmp_path), "--resume", str(root)]
    )
    with pytest.raises(CheckpointError) as caught:
        resume.prepare_resume(config(tmp_path, str(root)), tmp_path)
    message = str(caught.value)
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt does not match its sha256" in message
    previous = root / store.tag_for(10)
    assert f"scaling train --output {tmp_path} --resume {previous}" in message
    assert bad.path.is_dir()  # an explicit choice is refused, not rearranged


def test_resume_path_to_an_older_checkpoint_moves_the_newer_ones_aside(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        fake_save(root, step)
    ref = resume.prepare_resume(config(tmp_path, str(root / store.tag_for(10))), tmp_path)
    assert ref.step == 10
    assert [r.step for r in store.committed(root)] == [10, 20, 30]  # nothing moves before the load worked
    assert resume.supersede_newer(ref, tmp_path / "elsewhere") == []  # another run's checkpoints: not ours
    assert len(resume.supersede_newer(ref, root)) == 2
    assert [r.step for r in store.committed(root)] == [10]
    assert store.read_latest(root).step == 10
    assert sorted(p.name for p in (root / "superseded").iterdir()) == [store.tag_for(20), store.tag_for(30)]


def test_fresh_run_into_a_used_directory_is_refused_unless_overwrite(tmp_path):
    root = tmp_path / "checkpoints"
    fake_save(root, 10)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(UserError, match=r"--resume auto.*another --output.*--overwrite"):
        resume.prepare_resume(config(tmp_path, None), tmp_path)
    assert store.committed(root)
    assert resume.prepare_resume(config(tmp_path, None, overwrite=True), tmp_path) is None
    assert not root.exists() and not (tmp_path / "metrics.jsonl").exists()
    # interrupted saves only (no commit): nothing of value, a fresh start cleans them itself
    (root / store.tag_for(3)).mkdir(parents=True)
    assert resume.prepare_resume(config(tmp_path, None), tmp_path) is None


def test_retention_never_keeps_a_truncated_checkpoint_over_a_sound_one(tmp_path):
    root = tmp_path / "checkpoints"
    fake_save(root, 20)
    fake_save(root, 33)
    truncate(root / store.tag_for(33) / "mp_rank_00_model_states.pt")  # damaged after its commit
    fake_save(root, 21)  # a later save of a run resumed from 20 (latest now names it)
    removed = store.retain(root, keep_last=2)
    assert removed == []
    assert [r.step for r in store.committed(root)] == [20, 21]
    assert (root / "corrupt" / store.tag_for(33)).is_dir()


def test_every_file_is_hashed_by_exactly_one_rank_its_own_shards_by_their_rank():
    sizes = {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt": 100,
        "zero_pp_rank_1_mp_rank_00_optim_states.pt": 100,
        "scaling/rank00001.safetensors": 5,
        "scaling/rank00000.pt": 5,
        "mp_rank_00_model_states.pt": 90,
        "scaling/model/config.json": 3,
        "scaling/run_config.json": 4,
    }
    shares = resume.hash_shares(sizes, 2)
    assert sorted(f for share in shares for f in share) == sorted(sizes)
    assert {"zero_pp_rank_1_mp_rank_00_optim_states.pt", "scaling/rank00001.safetensors"} <= set(shares[1])
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "scaling/rank00000.pt"} <= set(shares[0])
    loads = [sum(sizes[f] for f in share) for share in shares]
    assert max(loads) - min(loads) <= 90
    assert sorted(resume.hash_shares(sizes, 1)[0]) == sorted(sizes)


def test_a_flipped_shard_is_found_by_the_rank_that_hashes_it(tmp_path):
    ref = fake_save(tmp_path, 7)
    assert [resume.verify_share(ref, rank, 2) for rank in range(2)] == [None, None]
    flip(ref.path / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    found = [resume.verify_share(ref, rank, 2) for rank in range(2)]
    assert sum(problem is not None for problem in found) == 1
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt does not match its sha256" in next(filter(None, found))
    truncate(ref.path / "scaling" / "rank00001.pt")  # sizes: every rank sees it
    assert all("rank00001.pt is" in resume.verify_share(ref, rank, 2) for rank in range(2))


def test_metrics_past_the_resumed_step_are_dropped_and_kept_aside(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in range(1, 11)) + "garbage\n"
    )
    assert drop_records_after(path, 6) == 4
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()[:-1]] == [1, 2, 3, 4, 5, 6]
    assert path.read_text().endswith("garbage\n")
    aside = [
        json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl.superseded").read_text().splitlines()
    ]
    assert aside == [7, 8, 9, 10]
    assert drop_records_after(tmp_path / "none.jsonl", 3) == 0


def test_a_failed_save_names_the_os_error_free_space_and_size(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    fake_save(root, 10)
    ref = store.CheckpointRef(root, store.tag_for(20))
    needed = resume.total_bytes(store.CheckpointRef(root, store.tag_for(10)))
    with pytest.raises(SaveFailed) as caught, naming_write_errors(ref):
        raise OSError(errno.ENOSPC, "No space left on device", str(ref.path / "x.pt"))
    message = str(caught.value)
    assert "saving step 20" in message and "No space left on device" in message
    assert "free on" in message and f"takes {needed} bytes" in message

    # torch.save hides the errno: a (nearly) full filesystem is what names it
    monkeypatch.setattr("shutil.disk_usage", lambda path: _Usage(free=4096))
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 660288 vs 660176")
    with (
        pytest.raises(SaveFailed, match=r"No space left on device .*unexpected pos.*4096 bytes free"),
        naming_write_errors(ref),
    ):
        raise torch_error
    with pytest.raises(RuntimeError, match="Connection closed by peer") as peer, naming_write_errors(ref):
        raise RuntimeError("[../third_party/gloo/...] Connection closed by peer")
    assert not isinstance(peer.value, SaveFailed)  # a peer's failure keeps its own words


class _Usage:
    def __init__(self, free: int) -> None:
        self.free = free


def test_a_rank_report_survives_a_full_disk(tmp_path, monkeypatch, capsys):
    status.reserve_report(tmp_path, 1)
    assert status.read_reports(tmp_path) == []  # the reserved file is not a report
    real_write = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".rank-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    status.write_report(tmp_path, rank=1, step=12, kind=status.FAILED, error="SaveFailed: No space left")
    (report,) = status.read_reports(tmp_path)
    assert (report.rank, report.step, report.error) == (1, 12, "SaveFailed: No space left")
    assert not list((tmp_path / "reports").glob(".rank-*"))

    # nothing reserved and nothing writable: the report goes to stderr instead of vanishing
    status.write_report(tmp_path, rank=3, step=12, kind=status.FAILED, error="SaveFailed: No space left")
    err = capsys.readouterr().err
    assert "[rank 3] cannot write its report" in err and "SaveFailed: No space left" in err


def test_sigint_asks_for_a_save_and_a_second_one_stops_at_once(monkeypatch):
    monkeypatch.setattr(SigtermFlag, "SAME_REQUEST_S", 0.2)
    with SigtermFlag() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # a launcher's copy of the same Ctrl-C
        time.sleep(0.05)
        assert flag.raised
        time.sleep(0.3)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
