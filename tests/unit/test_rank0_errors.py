"""`on_rank0`/`from_rank0` on 2 gloo ranks: a user error reaches every rank as a user error (exit 2); a bug
keeps its traceback on rank 0 and fails the other ranks with an error that is not a user error."""

from __future__ import annotations

import pytest
from harness import run_ranks
from ranks_errors import rank0_outcome

PRELOAD = ("torch", "torch.distributed")


@pytest.mark.parametrize("share", [False, True], ids=["on_rank0", "from_rank0"])
def test_result_reaches_every_rank_only_when_shared(share):
    rank0, rank1 = run_ranks(rank0_outcome, 2, "ok", share, preload=PRELOAD, timeout=120)
    assert rank0 == {"result": {"answer": 42}}
    assert rank1 == {"result": {"answer": 42} if share else None}


@pytest.mark.parametrize("share", [False, True], ids=["on_rank0", "from_rank0"])
def test_user_error_on_rank0_is_a_user_error_everywhere(share):
    rank0, rank1 = run_ranks(rank0_outcome, 2, "user", share, preload=PRELOAD, timeout=120)
    assert rank0["type"] == "ConfigError"  # the original error, not a copy
    assert "UserError" in rank1["bases"]
    assert rank0["message"] == rank1["message"]
    assert "--data = 'missing.txt': no such file" in rank1["message"]


@pytest.mark.parametrize("share", [False, True], ids=["on_rank0", "from_rank0"])
def test_bug_on_rank0_keeps_its_traceback_and_is_no_user_error_elsewhere(share):
    rank0, rank1 = run_ranks(rank0_outcome, 2, "bug", share, preload=PRELOAD, timeout=120)
    assert rank0["type"] == "ZeroDivisionError"
    assert "UserError" not in rank0["bases"]
    assert 'raise ZeroDivisionError("a bug on rank 0")' in rank0["traceback"]  # the frame that failed
    assert rank1["type"] == "PeerFailed"
    assert "UserError" not in rank1["bases"]
    assert "rank 0 failed: ZeroDivisionError: a bug on rank 0" in rank1["message"]


def test_single_process_runs_fn_and_raises_the_original():
    from scaling.engine.dist import from_rank0, on_rank0

    assert from_rank0(lambda: 7, rank=0) == 7
    with pytest.raises(ZeroDivisionError):
        on_rank0(lambda: 1 / 0, rank=0)
