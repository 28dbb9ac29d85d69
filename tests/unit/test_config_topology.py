"""One Topology: the run values, the memory estimate, the reshape layout and the JSON checks all take the
data-parallel size, the ZeRO partition and the sequence-parallel rule from scaling.distributed.topology."""

from __future__ import annotations

import pytest

from scaling.checkpoint.reshape import Layout as ReshapeLayout
from scaling.checkpoint.reshape import check_reshape
from scaling.config.deepspeed import RunValues
from scaling.config.estimate import Layout as EstimateLayout
from scaling.config.schema import check_cross
from scaling.distributed.topology import SEQUENCE_PARALLEL_RULE, Topology
from scaling.errors import ConfigError

DEGREES = [(8, 2, 2, 1), (8, 1, 1, 4), (6, 4, 1, 1), (4, 2, 1, 2), (1, 1, 1, 1), (12, 1, 3, 1)]


def test_unchecked_topology_describes_an_impossible_layout_and_lists_its_problems() -> None:
    with pytest.raises(ConfigError):
        Topology(world_size=6, tensor_parallel=4)
    topo = Topology(world_size=6, tensor_parallel=4, check=False)
    assert topo.data_parallel == 1
    assert [p.path for p in topo.problems()] == ["parallel"]
    assert Topology(world_size=2, tensor_parallel=0, check=False).data_parallel == 2  # no division by zero


def test_zero_partition_and_global_batch() -> None:
    topo = Topology(world_size=8, sequence_parallel=2)
    assert (topo.model_parallel, topo.data_parallel, topo.zero_partition) == (2, 4, 8)
    assert topo.global_batch(micro_batch=3, grad_accum=2) == 3 * 2 * 4
    assert Topology(world_size=8, tensor_parallel=2, pipeline_stages=2).zero_partition == 2


@pytest.mark.parametrize(("world", "tp", "pp", "sp"), DEGREES)
def test_every_layout_class_derives_its_sizes_from_topology(world: int, tp: int, pp: int, sp: int) -> None:
    topo = Topology(
        world_size=world, tensor_parallel=tp, pipeline_stages=pp, sequence_parallel=sp, check=False
    )
    run = RunValues(world_size=world, tensor_parallel=tp, pipeline_stages=pp, sequence_parallel=sp)
    assert run.topology == topo and run.data_parallel == topo.data_parallel
    est = EstimateLayout(gpus_per_node=world, tensor_parallel=tp, pipeline_stages=pp, sequence_parallel=sp)
    assert (est.data_parallel, est.zero_partitions) == (topo.data_parallel, topo.zero_partition)
    shape = ReshapeLayout(world_size=world, tensor_parallel=tp, pipeline_stages=pp, sequence_parallel=sp)
    assert (shape.data_parallel, shape.zero_ranks) == (topo.data_parallel, topo.zero_partition)


def test_the_sequence_parallel_rule_is_stated_once() -> None:
    topo = Topology(world_size=4, tensor_parallel=2, sequence_parallel=2, check=False)
    assert [p.message for p in topo.problems()] == [SEQUENCE_PARALLEL_RULE]
    from_json = check_cross({"zero_optimization": {"stage": 1}}, topo)
    assert SEQUENCE_PARALLEL_RULE in [p.message for p in from_json]
    reasons = check_reshape(
        ReshapeLayout(world_size=4, sequence_parallel=2),
        ReshapeLayout(world_size=4, tensor_parallel=2, sequence_parallel=2),
        zero_stage=1,
    )
    assert any(SEQUENCE_PARALLEL_RULE in reason for reason in reasons)
