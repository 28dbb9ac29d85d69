"""A received checkpoint cannot run code, read outside itself or smuggle files out (docs/security.md).

One real ZeRO-2 checkpoint is trained; copies of it get a pickle payload in each kind of file (DeepSpeed's model
states, its optimizer states, our rank state in the earlier `.pt` format) with the manifest recomputed, as an
attacker would. Every command that reads checkpoints must refuse them with exit 2 and one message naming the
file, and the payload (which would create a marker file) must never run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from harness import run_ranks
from ranks import train_cli

from scaling.checkpoint import store
from scaling.checkpoint.state_file import read_rank_state
from scaling.cli.main import cli

STEP = "step-00000002"
KINDS = {
    "model_states": "mp_rank_00_model_states.pt",
    "optim_states": "zero_pp_rank_0_mp_rank_00_optim_states.pt",
    "rank_state": "scaling/rank00000.pt",
}


class Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _args(out: Path, corpus: Path, tokenizer: Path, *extra: str) -> list[str]:
    return [
        "--model", "tiny-gpt2", "--data", str(corpus), "--tokenizer", str(tokenizer), "--output", str(out),
        "--ds-config", "zero2", "--precision", "fp32", "--seq-len", "32", "--micro-batch", "2",
        "--max-steps", "2", "--save-every", "2", "--no-progress", "--no-tensorboard", "--no-export", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_corpus, clm_tokenizer) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert run_ranks(train_cli, 1, _args(out, small_corpus, clm_tokenizer))[0]["exit"] == 0
    return out


def hostile_copy(trained: Path, kind: str, where: Path) -> tuple[Path, Path]:
    """A copy of the trained run whose `kind` file carries a payload; returns (run dir, marker path)."""
    run = where / f"run-{kind}"
    shutil.copytree(trained, run)
    step = run / "checkpoints" / STEP
    marker = where / f"PWNED-{kind}"
    target = step / KINDS[kind]
    if kind == "rank_state":  # what an earlier version wrote, which a received checkpoint may still be
        fresh = step / "scaling" / "rank00000.safetensors"
        state = read_rank_state(fresh)
        fresh.unlink()
    else:
        state = torch.load(target, map_location="cpu", weights_only=False)  # our own file: trusted here
    state["innocent_looking"] = Payload(marker)
    torch.save(state, target)
    (step / store.MANIFEST).unlink()
    store.write_manifest(step, step=2)  # the manifest lives inside the checkpoint: an attacker recomputes it
    return run, marker


def assert_refused(code: int, output: str, kind: str, marker: Path, command: str) -> None:
    assert code == 2, (command, output)
    assert "refused" in output and Path(KINDS[kind]).name in output, (command, output)
    assert "Traceback" not in output, (command, output)
    assert not marker.exists(), f"the payload ran ({command})"


@pytest.mark.parametrize("kind", list(KINDS))
def test_export_reshape_and_evaluate_refuse_a_payload(trained, tmp_path, kind):
    run, marker = hostile_copy(trained, kind, tmp_path)
    runner = CliRunner()
    commands = {
        "export": ["export", str(run), "--output", str(tmp_path / "hf")],
        "reshape": ["checkpoint", "reshape", str(run), "--output", str(tmp_path / "re"), "--world-size", "2"],
        "compress evaluate": ["compress", "evaluate", str(run), "--max-samples", "2"],
        "verify": ["checkpoint", "verify", str(run)],
    }
    for name, argv in commands.items():
        result = runner.invoke(cli, argv)
        assert_refused(result.exit_code, result.output, kind, marker, name)
    assert not (tmp_path / "hf").exists() and not (tmp_path / "re" / STEP).exists()


@pytest.mark.parametrize(
    "kind", ["optim_states", pytest.param("rank_state", marks=pytest.mark.slow)]
)  # a process start with DeepSpeed each (~20 s on a quiet machine)
def test_resume_refuses_a_payload(trained, tmp_path, small_corpus, clm_tokenizer, kind):
    run, marker = hostile_copy(trained, kind, tmp_path)
    args = _args(tmp_path / "resumed", small_corpus, clm_tokenizer, "--max-steps", "4", "--resume", str(run))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "scaling", "train", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert_refused(done.returncode, done.stdout + done.stderr, kind, marker, "train --resume")


def test_loaders_refuse_a_payload_without_the_verify_scan(trained, tmp_path):
    """Defence in depth: DeepSpeed's own loader (zero_to_fp32 passes weights_only=False) refuses the payload
    through the restricted torch.load even when nothing checked the files before."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from scaling.compat.safe_load import restricted_torch_load
    from scaling.errors import CheckpointError

    run, marker = hostile_copy(trained, "optim_states", tmp_path)
    with restricted_torch_load(), pytest.raises(CheckpointError, match="refused to load: it asks for"):
        get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), tag=STEP)
    assert not marker.exists()
    assert torch.load is not None and torch.load.__module__ == "torch.serialization"  # restored


def test_symlink_out_of_the_checkpoint_is_never_copied(trained, tmp_path):
    run = tmp_path / "run-link"
    shutil.copytree(trained, run)
    step = run / "checkpoints" / STEP
    secret = tmp_path / "secret.txt"
    secret.write_text("not for export\n")
    link = step / "scaling" / "model" / "special_tokens_map.json"
    link.unlink(missing_ok=True)
    link.symlink_to(secret)
    (step / store.MANIFEST).unlink()
    store.write_manifest(step, step=2)
    result = CliRunner().invoke(cli, ["export", str(run), "--output", str(tmp_path / "hf")])
    assert result.exit_code == 2 and "is a symlink" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "hf").exists()
    copies = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and p != secret]
    assert not any("not for export" in p.read_text(errors="ignore") for p in copies)


def test_manifest_and_latest_traversal_are_refused(trained, tmp_path):
    run = tmp_path / "run-traversal"
    shutil.copytree(trained, run)
    root = run / "checkpoints"
    (root / store.LATEST).write_text("../../elsewhere/step-00000002\n")
    result = CliRunner().invoke(cli, ["checkpoint", "verify", str(run)])
    assert result.exit_code == 2 and "refused" in result.output, result.output
    (root / store.LATEST).write_text(STEP + "\n")

    manifest = store.verify(root / STEP)
    for outside in ("/etc/hostname", "../../../../etc/hostname"):
        files = dict(manifest["files"])
        files[outside] = {"size": 1, "sha256": "0" * 64}
        (root / STEP / store.MANIFEST).write_text(__import__("json").dumps({**manifest, "files": files}))
        result = CliRunner().invoke(cli, ["checkpoint", "verify", str(run)])
        assert result.exit_code == 2 and "outside" in result.output and outside in result.output, (
            result.output
        )


def test_our_checkpoint_is_data_only_and_umask_moded(trained, tmp_path):
    ours = trained / "checkpoints" / STEP / "scaling"
    assert (ours / "rank00000.safetensors").is_file() and not list(ours.glob("rank*.pt"))
    assert store.verify(trained / "checkpoints" / STEP)["step"] == 2
    old = os.umask(0o027)
    try:
        result = CliRunner().invoke(cli, ["export", str(trained), "--output", str(tmp_path / "hf")])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "hf", *(tmp_path / "hf").iterdir()]}
    assert (
        modes["hf"] == 0o750 and modes["model.safetensors"] == 0o640 and set(modes.values()) == {0o750, 0o640}
    )
