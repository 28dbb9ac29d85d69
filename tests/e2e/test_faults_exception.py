"""A rank that raises ends the job on every rank, quickly, and the reports name it (not its peers) with the
step; `scaling launch` turns the reports into that message."""

from __future__ import annotations

from fixtures.launch.helpers import train_args, train_with_failing_rank
from harness import run_ranks

from scaling.launch.status import FAILED, conclude, read_reports


def test_exception_in_one_rank_is_reported_with_rank_and_step(tmp_path, small_corpus, clm_tokenizer):
    out = tmp_path / "run"
    args = train_args(out, small_corpus, clm_tokenizer, 6, "--dist-timeout", "30")
    results = run_ranks(train_with_failing_rank, 2, args, 1, 3, timeout=180)
    assert all(r["exit"] != 0 for r in results)
    reports = {r.rank: r for r in read_reports(out)}
    assert reports[1].kind == FAILED and reports[1].step == 3
    assert reports[1].error == "ValueError: injected failure in rank 1" and not reports[1].peer_failure
    # the peer learnt of it from its next collective, not from a timeout
    assert reports[0].kind == FAILED and reports[0].peer_failure and "Timed out" not in reports[0].error
    message = conclude(1, list(reports.values()), world_size=2).message
    assert "rank 1 on " in message and "failed at step 3: ValueError: injected failure in rank 1" in message
