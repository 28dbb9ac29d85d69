"""Ulysses sequence parallelism through `scaling train`: the same losses as one rank, exact resume, export,
SP x DP with ZeRO-3 on 4 ranks, and the layouts refused before launch."""

from __future__ import annotations

from click.testing import CliRunner
from harness import run_ranks
from ranks import train_cli
from ranks_parallel import exported_eval_loss

from scaling.cli.main import cli


def _args(out, small_corpus, clm_tokenizer, *extra: str) -> list[str]:
    return [
        "--model", "tiny-llama", "--data", str(small_corpus), "--eval-data", str(small_corpus),
        "--eval-batches", "2", "--tokenizer", str(clm_tokenizer), "--output", str(out),
        "--precision", "fp32", "--seq-len", "64", "--micro-batch", "2", "--lr", "3e-3",
        "--max-steps", "8", "--log-every", "2", "--save-every", "4", "--no-progress", "--no-tensorboard",
        *extra,
    ]  # fmt: skip


def _losses(records):
    return [r["loss"] for r in records if "loss" in r]


def test_sp2_equals_one_rank_resumes_exactly_and_exports(tmp_path, small_corpus, clm_tokenizer):
    # One data-parallel share either way: two sequence peers must compute what one rank computes alone.
    single = run_ranks(
        train_cli, 1, _args(tmp_path / "one", small_corpus, clm_tokenizer, "--ds-config", "zero2")
    )
    sp_args = _args(
        tmp_path / "sp", small_corpus, clm_tokenizer, "--ds-config", "zero2", "--sequence-parallel", "2"
    )
    halted = run_ranks(train_cli, 2, [*sp_args, "--halt-at-step", "4"])
    resumed = run_ranks(train_cli, 2, [*sp_args, "--resume", "auto"])
    assert [r["exit"] for r in single + halted + resumed] == [0] * 5, [r["message"] for r in halted + resumed]
    want = _losses(single[0]["records"])
    got = _losses(resumed[0]["records"])  # metrics.jsonl holds both phases
    assert len(got) == len(want) == 4
    for a, b in zip(got, want, strict=True):
        assert abs(a - b) <= 1e-5 * b, (got, want)
    assert want[-1] < want[0]
    logged = next(r["eval_loss"] for r in reversed(resumed[0]["records"]) if "eval_loss" in r)
    assert abs(exported_eval_loss(str(tmp_path / "sp"), token_weighted=True) - logged) <= 1e-5 * logged
    tokens = next(r["tokens_per_s"] for r in reversed(resumed[0]["records"]) if "tokens_per_s" in r)
    assert tokens > 0

    # Same world, other layout (2 data ranks): the shards would load, the data positions would not fit.
    halted_ckpt = tmp_path / "sp" / "checkpoints" / "step-00000004"
    as_dp = _args(
        tmp_path / "sp", small_corpus, clm_tokenizer, "--ds-config", "zero2", "--resume", str(halted_ckpt)
    )
    refused = run_ranks(train_cli, 2, as_dp)
    assert [r["exit"] for r in refused] == [2, 2]
    assert "world 2, sp 2, this run is world 2" in refused[0]["message"]
    assert "scaling checkpoint reshape" in refused[0]["message"]

    # ... converted, it resumes on one rank where the one-rank run stood.
    reshaped = CliRunner().invoke(
        cli,
        [
            "checkpoint",
            "reshape",
            str(halted_ckpt),
            "--output",
            str(tmp_path / "one_rank"),
            "--world-size",
            "1",
        ],
    )
    assert reshaped.exit_code == 0, reshaped.output
    one_rank_args = _args(tmp_path / "cont", small_corpus, clm_tokenizer, "--ds-config", "zero2")
    continued = run_ranks(train_cli, 1, [*one_rank_args, "--resume", str(tmp_path / "one_rank")])
    assert continued[0]["exit"] == 0, continued[0]["message"]
    tail = _losses(continued[0]["records"])
    assert len(tail) == 2
    for a, b in zip(tail, want[2:], strict=True):
        assert abs(a - b) <= 1e-5 * b, (tail, want)


def test_sp2_x_dp2_zero3_trains_and_exports(tmp_path, small_corpus, clm_tokenizer):
    out = tmp_path / "run"
    args = _args(out, small_corpus, clm_tokenizer, "--ds-config", "zero3", "--sequence-parallel", "2")
    results = run_ranks(train_cli, 4, args)
    assert [r["exit"] for r in results] == [0, 0, 0, 0], [r["message"] for r in results]
    losses = _losses(results[0]["records"])
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.2, losses
    logged = next(r["eval_loss"] for r in reversed(results[0]["records"]) if "eval_loss" in r)
    assert abs(exported_eval_loss(str(out), token_weighted=True) - logged) <= 1e-5 * logged


def test_refused_layout_exits_2_before_launch(tmp_path, small_corpus, clm_tokenizer):
    out = tmp_path / "bad"
    args = [*_args(out, small_corpus, clm_tokenizer), "--model", "tiny-bert", "--task", "mlm"]
    # through the scaling group, which translates user errors to exit 2
    result = CliRunner().invoke(cli, ["train", *args, "--sequence-parallel", "2", "--num-gpus", "2"])
    assert result.exit_code == 2, result.output
    assert "--task" in result.output and "causal LMs (clm) only" in result.output
    assert "Traceback" not in result.output


def test_one_rank_checkpoint_resumes_sequence_parallel_after_reshape(tmp_path, small_corpus, clm_tokenizer):
    args = _args(tmp_path / "one", small_corpus, clm_tokenizer, "--ds-config", "zero2")
    full = run_ranks(train_cli, 1, args)
    halted = run_ranks(train_cli, 1, [*_args(tmp_path / "half", small_corpus, clm_tokenizer, "--ds-config", "zero2"),
                                      "--halt-at-step", "4"])  # fmt: skip
    assert full[0]["exit"] == halted[0]["exit"] == 0
    reshaped = CliRunner().invoke(
        cli,
        ["checkpoint", "reshape", str(tmp_path / "half" / "checkpoints" / "step-00000004"),
         "--output", str(tmp_path / "sp_ckpt"), "--world-size", "2", "--sequence-parallel", "2"],
    )  # fmt: skip
    assert reshaped.exit_code == 0, reshaped.output
    sp_args = _args(
        tmp_path / "sp", small_corpus, clm_tokenizer, "--ds-config", "zero2", "--sequence-parallel", "2"
    )
    resumed = run_ranks(train_cli, 2, [*sp_args, "--resume", str(tmp_path / "sp_ckpt")])
    assert [r["exit"] for r in resumed] == [0, 0], [r["message"] for r in resumed]
    want, got = _losses(full[0]["records"])[2:], _losses(resumed[0]["records"])
    assert len(got) == 2
    for a, b in zip(got, want, strict=True):
        assert abs(a - b) <= 1e-5 * b, (got, want)
