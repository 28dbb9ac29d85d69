from scaling.engine.trainer import run_config_changes


def test_changed_options_are_named_with_old_and_new_values():
    saved = {"optim": {"lr": 0.001, "betas": [0.9, 0.999]}, "deepspeed": {"zero_optimization": {"stage": 2}},
             "checkpoint": {"output": "a"}, "total_steps": 10, "model": {"tokenizer": "/x/tok"}}  # fmt: skip
    current = {"optim": {"lr": 0.002, "betas": (0.9, 0.999)}, "deepspeed": {"zero_optimization": {"stage": 3}},
               "checkpoint": {"output": "b"}, "total_steps": 10, "model": {"tokenizer": "/y/tok"}}  # fmt: skip
    assert run_config_changes(saved, current) == [
        "optim.lr: 0.001 -> 0.002",
        "deepspeed.zero_optimization.stage: 2 -> 3",
    ]


def test_same_run_reports_nothing():
    run = {"optim": {"lr": 0.001}, "data": {"train": ["x.txt"]}, "world_size": 2}
    assert run_config_changes(run, dict(run)) == []
