"""Distillation on the tensor- and sequence-parallel layouts: the composed trainer runs the distillation
objective on AutoTP (2 ranks, tensor_parallel 2) and Ulysses (2 ranks, sequence_parallel 2), and each computes
the one-rank run's per-step losses (one data-parallel share either way) and eval figures: with a layer-reduced
student, and with a narrower student matched on hidden states through a trained projection."""

from __future__ import annotations

import pytest
from harness import run_ranks
from ranks_distill import distill_cli, make_model

LOSS_RTOL = 1e-5
STEPS = 6


@pytest.fixture(scope="module")
def models(clm_tokenizer, tmp_path_factory):
    # 4 query / 2 key-value heads: both degrees of 2 divide them (AutoTP shards heads, Ulysses trades them).
    root = tmp_path_factory.mktemp("distill-parallel")
    teacher = make_model("llama", "clm", clm_tokenizer, root / "teacher", layers=4, heads=4, kv_heads=2)
    narrow = make_model(
        "llama", "clm", clm_tokenizer, root / "narrow", layers=2, width=16, heads=4, kv_heads=2, seed=1,
        init=0.02,
    )  # fmt: skip
    return {"teacher": teacher, "narrow": narrow}


def _args(models, student, out, corpus, *extra):
    chosen = ["--student-layers", "2"] if student == "reduced" else ["--student", str(models["narrow"]),
                                                                     "--hidden-loss", "0.05"]  # fmt: skip
    return ["--teacher", str(models["teacher"]), *chosen, "--task", "clm", "--data", str(corpus),
            "--eval-data", str(corpus), "--eval-batches", "2", "--output", str(out), "--precision", "fp32",
            "--seq-len", "32", "--micro-batch", "2", "--grad-accum", "2", "--lr", "3e-3", "--warmup-steps", "1",
            "--max-steps", str(STEPS), "--log-every", "1", "--alpha", "0.5", "--temperature", "2",
            "--no-progress", "--no-tensorboard", *extra]  # fmt: skip


def _losses(records):
    return [r["loss"] for r in records if "loss" in r]


def _eval(records):
    return next(r for r in reversed(records) if "eval_kd_loss" in r)


def _assert_matches(got_records, want_records):
    got, want = _losses(got_records), _losses(want_records)
    assert len(got) == len(want) == STEPS
    for a, b in zip(got, want, strict=True):
        assert abs(a - b) <= LOSS_RTOL * abs(b), (got, want)
    got_eval, want_eval = _eval(got_records), _eval(want_records)
    for key in ("eval_loss", "eval_kd_loss"):
        assert abs(got_eval[key] - want_eval[key]) <= LOSS_RTOL * want_eval[key], (key, got_eval, want_eval)


@pytest.mark.parametrize("student", ["reduced", "narrow"])
@pytest.mark.parametrize(
    ("one_rank_config", "layout"),
    [
        ("zero1", ["--ds-config", "autotp", "--tensor-parallel", "2"]),
        ("zero2", ["--ds-config", "zero2", "--sequence-parallel", "2"]),
    ],
    ids=["autotp", "ulysses"],
)
def test_parallel_distillation_matches_one_rank(
    tmp_path, small_corpus, models, one_rank_config, layout, student
):
    single = run_ranks(
        distill_cli, 1, _args(models, student, tmp_path / "one", small_corpus, "--ds-config", one_rank_config)
    )[0]
    parallel = run_ranks(distill_cli, 2, _args(models, student, tmp_path / "par", small_corpus, *layout))
    assert single["exit"] == 0 and [r["exit"] for r in parallel] == [0, 0]
    _assert_matches(parallel[0]["records"], single["records"])
    assert (tmp_path / "par" / "final" / "model.safetensors").is_file()
    if student == "reduced":
        curve = _losses(single["records"])
        assert curve[-1] < curve[0], curve
    else:
        _assert_same_projection(tmp_path / "one", tmp_path / "par")


def _assert_same_projection(one, par):
    """The projection trained beside the engine ends where the one-rank run's does, and so does its Adam
    first moment, which (unlike Adam's update) scales with the gradient: a wrong average over the ranks shows."""

    def saved(run):
        from scaling.checkpoint.state_file import read_rank_state

        state = read_rank_state(
            run / "checkpoints" / f"step-{STEPS:08d}" / "scaling" / "rank00000.safetensors"
        )
        moment = next(iter(state["projection_optim"]["state"].values()))["exp_avg"]
        return state["projection"]["weight"], moment

    (w_one, m_one), (w_par, m_par) = saved(one), saved(par)
    assert (w_par - w_one).abs().max() <= 1e-5, (w_par - w_one).abs().max()
    assert (m_par - m_one).abs().max() <= 1e-4 * m_one.abs().max(), (
        (m_par - m_one).abs().max(),
        m_one.abs().max(),
    )


def test_attention_maps_refused_on_a_sequence_parallel_student(tmp_path, small_corpus, models):
    args = _args(models, "reduced", tmp_path / "run", small_corpus, "--attention-loss", "1",
                 "--ds-config", "zero2", "--sequence-parallel", "2")  # fmt: skip
    results = run_ranks(distill_cli, 2, args)
    assert [r["exit"] for r in results] == [2, 2]
    assert "--attention-loss needs whole attention maps" in results[0]["message"], results[0]["message"]
