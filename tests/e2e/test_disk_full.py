"""A save on a full disk: the run stops naming "No space left on device", the free space and what a checkpoint
takes; the rank's report still gets written (into the file reserved at start); `latest` keeps naming the last
sound checkpoint. The disk is a 5 MiB tmpfs in a private mount namespace (needs root or user namespaces)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHECK = """
import json, sys
from pathlib import Path
from scaling.checkpoint import store
from scaling.launch.status import read_reports
run = Path(sys.argv[1])
latest = store.read_latest(run / "checkpoints")
store.verify(latest.path, hashes=True)
reports = [r.__dict__ for r in read_reports(run)]
print(json.dumps({"latest": latest.step, "reports": reports}))
"""


def can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m none {shlex.quote(str(where))}"],
        capture_output=True,
    )
    return probe.returncode == 0


def test_save_on_a_full_disk_names_the_error_and_the_report_survives(tmp_path, small_corpus, clm_tokenizer):
    disk = tmp_path / "disk"
    disk.mkdir()
    if not can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs in a private mount namespace here")
    run = disk / "run"
    train = [
        sys.executable, "-m", "scaling", "train", "--model", "tiny-gpt2", "--data", str(small_corpus),
        "--tokenizer", str(clm_tokenizer), "--output", str(run), "--precision", "fp32", "--seq-len", "32",
        "--micro-batch", "2", "--max-steps", "6", "--save-every", "1", "--keep-last", "1", "--log-every", "1",
        "--no-progress", "--no-tensorboard", "--no-export",
    ]  # fmt: skip
    check = [sys.executable, "-c", CHECK, str(run)]
    # A checkpoint of this run is ~3 MiB: the first fits, the second (written before the first is deleted)
    # does not. Everything is read inside the namespace: the tmpfs goes with it.
    script = (
        f"mount -t tmpfs -o size=5m none {shlex.quote(str(disk))} && "
        f"{shlex.join(train)} 2> {shlex.quote(str(tmp_path / 'train.err'))}; "
        f"echo $? > {shlex.quote(str(tmp_path / 'rc'))}; {shlex.join(check)}"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=600
    )
    err = (tmp_path / "train.err").read_text()
    assert done.returncode == 0, done.stderr[-3000:] + err[-3000:]
    assert int((tmp_path / "rc").read_text()) not in (0, 2, 75), err[-3000:]
    failure = next(line for line in err.splitlines() if "failed at step" in line)
    assert "SaveFailed: saving step 2" in failure and "No space left on device" in failure, err[-3000:]
    assert "free on" in failure and "a checkpoint of this run takes" in failure
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["latest"] == 1  # the sound checkpoint before the failed save
    (report,) = summary["reports"]
    assert report["kind"] == "failed" and "No space left on device" in report["error"]
