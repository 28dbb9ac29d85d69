import pytest

from scaling.distributed import LaunchEnv, Topology
from scaling.errors import ConfigError


def test_degrees_and_batch():
    topo = Topology(world_size=8, tensor_parallel=2, pipeline_stages=2)
    assert topo.data_parallel == 2
    assert topo.global_batch(micro_batch=4, grad_accum=3) == 4 * 3 * 2


def test_layout_matches_deepspeed_pipe_data_model_order():
    topo = Topology(world_size=8, tensor_parallel=2, pipeline_stages=2)
    # consecutive ranks share a tensor-parallel group; the pipeline axis is outermost
    assert [topo.coordinates(r) for r in range(8)] == [
        (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1),
        (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1),
    ]  # fmt: skip
    assert topo.data_rank(0) == topo.data_rank(1) == topo.data_rank(4) == 0


def test_mismatch_names_every_number():
    with pytest.raises(ConfigError) as err:
        Topology(world_size=6, tensor_parallel=4, pipeline_stages=1)
    assert "tensor_parallel(4) * pipeline_stages(1) = 4 does not divide WORLD_SIZE(6)" in str(err.value)


def test_non_positive_degree_rejected():
    with pytest.raises(ConfigError, match="tensor_parallel"):
        Topology(world_size=2, tensor_parallel=0)


def test_launch_env_reads_launcher_variables():
    env = LaunchEnv.from_environ(
        {
            "RANK": "3",
            "LOCAL_RANK": "1",
            "WORLD_SIZE": "4",
            "LOCAL_SIZE": "2",
            "MASTER_ADDR": "10.0.0.1",
            "MASTER_PORT": "1234",
        }
    )
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (3, 1, 4, 2)
    assert env.launched and env.master_addr == "10.0.0.1" and env.master_port == 1234
    assert not LaunchEnv.from_environ({}).launched
    # the --local_rank the deepspeed launcher appends wins over the variable
    assert LaunchEnv.from_environ({"LOCAL_RANK": "0"}, local_rank=5).local_rank == 5


def test_sequence_peers_are_consecutive_ranks_that_read_the_same_data():
    topo = Topology(world_size=4, sequence_parallel=2)
    assert topo.data_parallel == 2
    assert [topo.data_rank(r) for r in range(4)] == [0, 0, 1, 1]  # DeepSpeed's Ulysses groups: {0,1}, {2,3}
    assert [topo.counts_data(r) for r in range(4)] == [True, False, True, False]
    assert topo.global_batch(micro_batch=2, grad_accum=3) == 2 * 3 * 2
    assert "sp 2" in topo.describe()


def test_sequence_parallel_combines_with_data_parallel_only():
    with pytest.raises(ConfigError, match="not with tensor or pipeline parallelism"):
        Topology(world_size=4, sequence_parallel=2, tensor_parallel=2)
    with pytest.raises(ConfigError, match=r"sequence_parallel\(4\) = 4 does not divide WORLD_SIZE\(6\)"):
        Topology(world_size=6, sequence_parallel=4)


def test_only_the_first_tensor_peer_of_the_first_stage_counts_data():
    topo = Topology(world_size=8, tensor_parallel=2, pipeline_stages=2)
    assert [r for r in range(8) if topo.counts_data(r)] == [0, 2]
