"""The start-up check of who shares the run directory, and the resume step all nodes agree on."""

from __future__ import annotations

from harness import run_ranks
from ranks_storage import adopt_case, storage_cases

from scaling.engine.run_dir import Sighting, storage_problem


def _s(rank: int, seen: set[int], local_rank: int = 0, directory: str = "/out") -> Sighting:
    return Sighting(rank, local_rank, directory, frozenset(seen))


def test_storage_problem_per_mode():
    shared = [_s(0, {0, 1, 2, 3}), _s(1, {0, 1, 2, 3}, 1), _s(2, {0, 1, 2, 3}), _s(3, {0, 1, 2, 3}, 1)]
    per_node = [_s(0, {0, 1}), _s(1, {0, 1}, 1), _s(2, {2, 3}), _s(3, {2, 3}, 1)]
    assert storage_problem(shared, node_local=False) is None
    assert storage_problem(per_node, node_local=True) is None
    message = storage_problem(per_node, node_local=False)
    assert message and "rank 2 sees the probe files of rank(s) 2, 3 of 4" in message
    assert "--set checkpoint.use_node_local_storage=true" in message
    assert "would overwrite each other's checkpoint files" in (storage_problem(shared, node_local=True) or "")
    # two local rank 0s in one directory: not one node's ranks (DeepSpeed's writer rule would clash)
    odd = [_s(0, {0, 1}), _s(1, {0, 1}), _s(2, {2, 3}), _s(3, {2, 3}, 1)]
    assert "are not one node's ranks" in (storage_problem(odd, node_local=True) or "")
    lopsided = [_s(0, {0, 1}), _s(1, {1}, 1)]
    assert "do not all see the same" in (storage_problem(lopsided, node_local=True) or "")


def test_two_nodes_check_their_run_directories_and_agree_on_the_resume_step(tmp_path):
    results = run_ranks(storage_cases, 2, str(tmp_path), timeout=120)
    for rank, out in enumerate(results):
        assert "not shared by all nodes" in out["own_dirs_assumed_shared"]
        assert f"rank {rank} sees the probe files of rank(s) {rank} of 2" in out["own_dirs_assumed_shared"]
        assert out["own_dirs_node_local"] == "ok"
        assert out["shared_dir_shared"] == "ok"
        assert "every node sees the same run directory" in out["shared_dir_node_local"]
        assert out["probes_left"] == []
        assert out["resume_step"] == 3  # node 0's latest is 6, node 1's 3: the newest both committed
        assert out["latest_after"] == "step-00000003"  # node 0 saves step 6 again: `latest` must not name it
        assert "rank(s) 1 found no checkpoint" in out["one_node_without"]


def test_a_node_with_its_own_run_directory_gets_rank0s_prepared_files(tmp_path):
    _, node1 = run_ranks(adopt_case, 2, str(tmp_path), timeout=120)
    own = str(tmp_path / "node1")
    assert node1["files"] == ["student/model.safetensors", "tokenizer/tokenizer.json"] and node1["same"]
    run = node1["config"]["run_config.json"]
    assert run["checkpoint"] == {"output": own, "resume": f"{own}/checkpoints/step-00000001"}
    assert run["model"] == {"tokenizer": f"{own}/tokenizer", "source": f"{own}/student"}
    assert run["data"] == {"train": [f"{tmp_path}/corpus.txt"]}  # inputs outside the run stay where they are
    assert node1["config"]["distill_config.json"] == {"student_dir": f"{own}/student"}
