"""`scaling train` refuses what this machine cannot run and garbage data at validation: exit 2, one message
naming the problem and its fix, no traceback, nothing written (issue 17: fp16 on CPU, garbage text)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from scaling.cli.main import cli
from scaling.config.device import cuda_available


@pytest.fixture
def ok_args(tmp_path, small_corpus, clm_tokenizer):
    return ["--model", "tiny-gpt2", "--data", str(small_corpus), "--tokenizer", str(clm_tokenizer),
            "--output", str(tmp_path / "run"), "--max-steps", "2", "--precision", "fp32"]  # fmt: skip


def replace(args, flag, value):
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


@pytest.mark.skipif(cuda_available(), reason="fp16 on a machine without a GPU")
def test_fp16_on_cpu_exits_2_in_seconds_before_anything_is_written(ok_args, tmp_path):
    """It used to start the ranks and fail ~26 s later with DeepSpeed's "Type fp16 is not supported" tracebacks
    (single process: exit 1 and a 56-line traceback)."""
    code = (
        "import sys\nfrom scaling.cli.main import cli\n"
        "try:\n    cli.main(sys.argv[1:], standalone_mode=True)\n"
        "finally:\n    print('DEEPSPEED_IMPORTED', 'deepspeed' in sys.modules)\n"
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, "train", *replace(ok_args, "--precision", "fp16")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (
        "fp16 (option --precision) needs a GPU" in proc.stderr and "--precision bf16 or fp32" in proc.stderr
    )
    assert "DEEPSPEED_IMPORTED False" in proc.stdout  # refused before DeepSpeed was even imported
    assert not (tmp_path / "run").exists()
    assert elapsed < 60, elapsed  # ~5-15 s on 2 busy cores: mostly the imports of transformers' configs


def test_garbage_text_exits_2_naming_file_and_first_bad_offset(ok_args, tmp_path):
    """Random bytes in a .txt file used to train without a word (only `data/repaired_utf8: 778` in metrics)."""
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(b"a fine first line\n\xff" + os.urandom(100_000))
    result = CliRunner().invoke(cli, ["train", *replace(ok_args, "--data", str(garbage))])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in (f"{garbage}:2 (byte offset 18)", "not utf-8", "--max-bad-fraction", "--encoding"):
        assert fragment in result.output, result.output
    assert not (tmp_path / "run").exists()  # refused at validation: nothing prepared
