"""The composed trainer's small parts, without a process group: the rank state gathered from stateful
extras, a sequence shard's view of whole-sequence tensors, and the objective's eval arithmetic."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from scaling.engine.objective import LanguageModelling
from scaling.engine.shards import IGNORE, SequenceShard, shard_batch
from scaling.engine.state import Keyed, RankState, RngState


class Box:
    def __init__(self, **values):
        self.values = values

    def state_dict(self):
        return dict(self.values)

    def load_state_dict(self, state):
        self.values = {k: state[k] for k in self.values}


def test_rank_state_is_the_flat_union_of_its_parts_and_gives_each_its_keys_back():
    counters, stream = Box(step=3, tokens_seen=10), Box(batches=7)
    state = RankState()
    state.add(counters)
    state.add(Keyed("data", stream))
    state.add(RngState())
    saved = state.state_dict()
    assert set(saved) == {"step", "tokens_seen", "data", "rng"}  # the keys reshape and export read
    assert saved["data"] == {"batches": 7}
    counters.values, stream.values = {"step": 0, "tokens_seen": 0}, {"batches": 0}
    next_draw = torch.rand(3)  # moves the generator on: the load must bring it back
    state.load_state_dict(saved)
    assert counters.values == {"step": 3, "tokens_seen": 10} and stream.values == {"batches": 7}
    assert torch.equal(torch.rand(3), next_draw)


def test_two_parts_claiming_one_key_is_a_bug():
    state = RankState()
    state.add(Box(step=1))
    state.add(Box(step=2))
    with pytest.raises(AssertionError, match="claimed twice"):
        state.state_dict()


@pytest.mark.parametrize("width", [8, 7])
def test_a_shard_takes_the_slice_of_whole_sequence_tensors_its_inputs_come_from(width):
    ids = torch.arange(1, width + 1).reshape(1, width)
    batch = {"input_ids": ids, "labels": ids.clone()}
    whole = torch.arange(width, dtype=torch.float32).reshape(1, width, 1).expand(1, width, 3) + 1
    pieces = []
    for rank in range(2):
        shard = SequenceShard.of(batch, sp_rank=rank, sp_size=2, group=None, grad_factor=1)
        inputs, labels = shard_batch(batch, rank, 2)
        assert torch.equal(shard.inputs["input_ids"], inputs["input_ids"])
        taken = shard.take(whole)
        assert taken.shape == (1, inputs["input_ids"].shape[1], 3)
        # position p of the shard is position p of the whole sequence; right padding is zero
        real = inputs["input_ids"] != 0
        assert torch.equal(taken[..., 0][real], inputs["input_ids"][real].float())
        assert (taken[..., 0][~real] == 0).all()
        pieces.append(labels)
    assert (torch.cat(pieces, 1) != IGNORE).sum() == width - 1


def test_language_modelling_eval_weighs_batches_by_their_targets():
    objective = LanguageModelling("clm")
    labels_a = torch.tensor([[1, 2, 3, -100]])  # 2 targets after the shift
    labels_b = torch.tensor([[1, 2, 3, 4]])  # 3 targets
    a = objective.output_totals(SimpleNamespace(loss=torch.tensor(1.0)), labels_a)
    b = objective.output_totals(SimpleNamespace(loss=torch.tensor(2.0)), labels_b)
    totals = {"loss": (a["loss"][0] + b["loss"][0], a["loss"][1] + b["loss"][1])}
    metrics = objective.metrics(totals)
    assert metrics["eval_loss"] == pytest.approx((1.0 * 2 + 2.0 * 3) / 5)
    assert "eval_perplexity" in metrics
    cls = LanguageModelling("seq-cls")
    out = SimpleNamespace(loss=torch.tensor(0.5), logits=torch.tensor([[0.1, 0.9], [0.8, 0.2]]))
    figures = cls.metrics(cls.output_totals(out, torch.tensor([1, 1])))
    assert figures == {"eval_loss": 0.5, "eval_accuracy": 0.5}
