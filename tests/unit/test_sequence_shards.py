"""Ulysses batch sharding and masks, without a process group."""

from __future__ import annotations

import torch

from scaling.engine.sequence_parallel import IGNORE, _block_causal_mask, shard_batch, token_loss_sum


def test_shards_cover_the_sequence_with_labels_shifted_before_the_cut():
    ids = torch.arange(1, 9).reshape(1, 8)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    first, first_labels = shard_batch(batch, 0, 2)
    second, second_labels = shard_batch(batch, 1, 2)
    assert first["input_ids"].tolist() == [[1, 2, 3, 4]] and second["input_ids"].tolist() == [[5, 6, 7, 8]]
    assert first["position_ids"].tolist() == [[0, 1, 2, 3]] and second["position_ids"].tolist() == [
        [4, 5, 6, 7]
    ]
    # token 4's target (5) lives in the other shard: the shift happens on the whole row
    assert first_labels.tolist() == [[2, 3, 4, 5]] and second_labels.tolist() == [[6, 7, 8, IGNORE]]
    assert "attention_mask" not in first


def test_padding_and_an_uneven_length_are_never_targets():
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, IGNORE)}
    shards = [shard_batch(batch, rank, 2) for rank in range(2)]
    assert all(inputs["input_ids"].shape == (2, 3) for inputs, _ in shards)  # 5 tokens padded to 6
    labels = torch.cat([labels for _, labels in shards], dim=1)
    assert labels.tolist() == [[6, 7, 8, 9, IGNORE, IGNORE], [6, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE]]
    positions = torch.cat([inputs["position_ids"] for inputs, _ in shards], dim=1)
    assert positions[0].tolist() == [0, 1, 2, 3, 4, 5]  # the pad continues the count: causal order holds


def test_packed_positions_give_a_block_diagonal_causal_mask():
    assert _block_causal_mask(torch.arange(6).reshape(1, 6)) is None  # one document: plain causal attention
    mask = _block_causal_mask(torch.tensor([[0, 1, 2, 0, 1, 0]]))
    assert mask.shape == (1, 1, 6, 6)
    visible = mask[0, 0].int().tolist()
    assert visible[2] == [1, 1, 1, 0, 0, 0]
    assert visible[4] == [0, 0, 0, 1, 1, 0]  # second document: itself only, causally
    assert visible[5] == [0, 0, 0, 0, 0, 1]


def test_token_loss_sum_counts_only_targets():
    logits = torch.zeros(1, 3, 4)
    loss, count = token_loss_sum(logits, torch.tensor([[1, IGNORE, 2]]))
    assert int(count) == 2
    assert abs(float(loss) - 2 * float(torch.log(torch.tensor(4.0)))) < 1e-6


def test_one_mask_serves_every_layer_of_a_batch():
    from scaling.engine.sequence_parallel import _DocumentMasks

    masks = _DocumentMasks()
    packed = torch.tensor([[0, 1, 2, 0, 1, 0]])
    first = masks(packed)
    assert masks(packed.clone()) is first  # the next layer gathers equal positions: no second s x s mask
    assert masks(torch.tensor([[0, 1, 0, 1, 2, 3]])) is not first  # the next batch gets its own
    assert masks(torch.arange(6).reshape(1, 6)) is None
