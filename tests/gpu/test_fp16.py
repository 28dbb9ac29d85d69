"""The true fp16 run: dynamic loss scaling on a GPU, its state saved in the checkpoint and restored."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 training needs a GPU"),
]


def test_fp16_trains_and_checkpoints_loss_scale(tmp_path, small_corpus, clm_tokenizer):
    from click.testing import CliRunner

    from scaling.cli.main import cli

    out = tmp_path / "run"
    args = ["train", "--model", "tiny-gpt2", "--data", str(small_corpus), "--tokenizer", str(clm_tokenizer),
            "--output", str(out), "--precision", "fp16", "--max-steps", "6", "--save-every", "3", "--log-every", "1",
            "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    from scaling.checkpoint.state_file import read_rank_state

    state = read_rank_state(out / "checkpoints" / "step-00000006" / "scaling" / "rank00000.safetensors")
    assert state["loss_scale"] is not None and state["loss_scale"] > 0
