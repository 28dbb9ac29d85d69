"""Resuming on another layout: DP 2 -> 1 / 4 through DeepSpeed's universal format, PP 2 -> 1 through
`scaling checkpoint reshape`, and the cases that cannot be converted."""

from __future__ import annotations

import torch
from harness import run_ranks
from ranks import train_cli
from ranks_parallel import dp_phase, tiny_model

from scaling.checkpoint.reshape import Layout, _to_universal, check_reshape
from scaling.checkpoint.state_file import read_rank_state

ROWS, SEQ, SAVE_AT, END = 4, 16, 2, 4
RTOL = 1e-5


def _reference(model, steps: int) -> list[float]:
    """The uninterrupted run in one process: the continuation any layout must reproduce."""
    from ranks_parallel import CLIP, LR, global_rows

    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    losses = []
    for step in range(steps):
        ids = global_rows(step, ROWS, SEQ, model.config.vocab_size)
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        losses.append(loss.item())
    return losses


def test_zero2_dp2_checkpoint_continues_on_dp1_and_dp4(tmp_path, clm_tokenizer):
    tok = str(clm_tokenizer)
    src, uni = tmp_path / "src", tmp_path / "uni"
    straight = _reference(tiny_model("tiny-llama", tok), END)
    first = run_ranks(dp_phase, 2, "tiny-llama", tok, str(src), 2, ROWS, SEQ, 0, SAVE_AT, None, "t")[0]
    for got, want in zip(first, straight[:SAVE_AT], strict=True):
        assert abs(got - want) <= RTOL * abs(want), (first, straight)
    _to_universal(src / "t", uni / "t")
    for world in (1, 4):
        resumed = run_ranks(
            dp_phase, world, "tiny-llama", tok, str(uni), 2, ROWS, SEQ, SAVE_AT, END, "t", None
        )[0]
        for got, want in zip(resumed, straight[SAVE_AT:], strict=True):
            assert abs(got - want) <= RTOL * abs(want), (world, resumed, straight)


def _args(out, corpus, tokenizer, *extra):
    return [
        "--model", "tiny-gpt2", "--data", str(corpus), "--tokenizer", str(tokenizer), "--output", str(out),
        "--precision", "fp32", "--seq-len", "32", "--micro-batch", "2", "--grad-accum", "2", "--lr", "3e-3",
        "--max-steps", str(END), "--log-every", "1", "--no-progress", "--no-tensorboard", "--no-export", *extra,
    ]  # fmt: skip


def _losses(result):
    return {r["step"]: r["loss"] for r in result["records"] if "loss" in r}


def test_two_stage_pipeline_resumes_unpipelined(tmp_path, small_corpus, clm_tokenizer):
    from click.testing import CliRunner

    from scaling.cli.main import cli

    pipe = ("--ds-config", "pipeline", "--pipeline-stages", "2")
    straight = run_ranks(train_cli, 2, _args(tmp_path / "a", small_corpus, clm_tokenizer, *pipe))[0]
    halted = run_ranks(
        train_cli, 2,
        _args(tmp_path / "b", small_corpus, clm_tokenizer, *pipe, "--save-every", str(SAVE_AT), "--halt-at-step", str(SAVE_AT)),
    )[0]  # fmt: skip
    assert halted["exit"] == 0 and straight["exit"] == 0
    full = _losses(straight)
    # the continuation at the original layout (2 stages, same checkpoint) ...
    same = run_ranks(
        train_cli, 2, _args(tmp_path / "b", small_corpus, clm_tokenizer, *pipe, "--resume", "auto")
    )[0]  # fmt: skip
    same_losses = {s: v for s, v in _losses(same).items() if s > SAVE_AT}
    assert sorted(same_losses) == list(range(SAVE_AT + 1, END + 1))
    assert all(abs(same_losses[s] - full[s]) <= 1e-6 * full[s] for s in same_losses), (same_losses, full)
    # ... and on one unpipelined rank after `scaling checkpoint reshape`
    reshaped = CliRunner().invoke(
        cli,
        ["checkpoint", "reshape", str(tmp_path / "b" / "checkpoints" / "step-00000002"), "--output",
         str(tmp_path / "c"), "--world-size", "1"],
    )  # fmt: skip
    assert reshaped.exit_code == 0, reshaped.output
    resumed = run_ranks(
        train_cli, 1,
        _args(tmp_path / "d", small_corpus, clm_tokenizer, "--ds-config", "zero1", "--resume", str(tmp_path / "c")),
    )[0]  # fmt: skip
    assert resumed["exit"] == 0
    cont = _losses(resumed)
    assert sorted(cont) == list(range(SAVE_AT + 1, END + 1))
    for step in cont:
        assert abs(cont[step] - full[step]) <= RTOL * abs(full[step]), (step, cont, full)


def test_zero3_dp2_run_resumes_on_one_zero2_rank_at_the_global_sample_position(
    tmp_path, small_corpus, clm_tokenizer
):
    from click.testing import CliRunner

    from scaling.cli.main import cli

    first = run_ranks(
        train_cli, 2,
        _args(tmp_path / "b", small_corpus, clm_tokenizer, "--ds-config", "zero3", "--grad-accum", "1",
              "--save-every", str(SAVE_AT), "--halt-at-step", str(SAVE_AT)),
    )[0]  # fmt: skip
    assert first["exit"] == 0
    out = tmp_path / "c"
    result = CliRunner().invoke(
        cli, ["checkpoint", "reshape", str(tmp_path / "b"), "--output", str(out), "--world-size", "1"]
    )
    assert result.exit_code == 0, result.output
    state = read_rank_state(next(out.glob("step-*")) / "scaling" / "rank00000.safetensors")
    # 2 steps x 2 ranks x 1 micro-batch of 2 samples = 8 samples = 4 micro-batches of the single new rank
    assert state["reshaped"] == {"consumed_samples": 8, "micro_batches_per_rank": 4}
    assert state["data"]["batches"] == 4 and state["data"]["dp_size"] == 1 and state["world_size"] == 1
    # the same global batch on one rank: 2 accumulation steps instead of 2 data-parallel ranks
    resumed = run_ranks(
        train_cli, 1,
        _args(tmp_path / "d", small_corpus, clm_tokenizer, "--ds-config", "zero2", "--resume", str(out)),
    )[0]  # fmt: skip
    assert resumed["exit"] == 0
    losses = _losses(resumed)
    assert sorted(losses) == [3, 4]
    assert losses[4] < _losses(first)[1]


def test_unconvertible_layouts_are_refused_with_the_reason():
    two = Layout(world_size=2, micro_batch=2)
    assert check_reshape(two, Layout(world_size=1), zero_stage=3) == []  # our own conversion
    tp = Layout(world_size=2, tensor_parallel=2)
    assert any("tensor-parallel" in r for r in check_reshape(tp, Layout(world_size=1), zero_stage=1))
    pp = Layout(world_size=2, pipeline_stages=2)
    assert any("new pipeline split" in r for r in check_reshape(two, pp, zero_stage=1))
    assert any("must divide" in r for r in check_reshape(two, Layout(world_size=3, pipeline_stages=2), 1))
    assert check_reshape(pp, Layout(world_size=1), zero_stage=1) == []
    assert check_reshape(two, Layout(world_size=4), zero_stage=2) == []


def test_zero3_dp2_checkpoint_continues_on_one_rank_under_zero3_and_zero2(tmp_path, clm_tokenizer):
    """DeepSpeed cannot convert ZeRO-3 checkpoints nor cross ZeRO families; our conversion does both."""
    from scaling.checkpoint.reshape import _universal_from_zero3

    tok = str(clm_tokenizer)
    src, uni = tmp_path / "src", tmp_path / "uni"
    straight = _reference(tiny_model("tiny-llama", tok), END)
    run_ranks(dp_phase, 2, "tiny-llama", tok, str(src), 3, ROWS, SEQ, 0, SAVE_AT, None, "t")
    _universal_from_zero3(src / "t", uni / "t", zero3_ranks=1)
    for zero in (3, 2):
        resumed = run_ranks(
            dp_phase, 1, "tiny-llama", tok, str(uni), zero, ROWS, SEQ, SAVE_AT, END, "t", None
        )[0]
        for got, want in zip(resumed, straight[SAVE_AT:], strict=True):
            assert abs(got - want) <= RTOL * abs(want), (zero, resumed, straight)


def test_reshape_cli_refuses_what_is_not_a_checkpoint(tmp_path):
    from click.testing import CliRunner

    from scaling.cli.main import cli

    result = CliRunner().invoke(
        cli, ["checkpoint", "reshape", str(tmp_path), "--output", str(tmp_path / "out"), "--world-size", "2"]
    )
    assert result.exit_code == 2 and "not a checkpoint" in result.output
    assert not (tmp_path / "out").exists()
