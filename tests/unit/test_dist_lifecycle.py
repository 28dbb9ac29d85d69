"""Two runs in one process: teardown must leave DeepSpeed no dead groups for the next run to use."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

from harness import free_port


def test_a_second_zero3_run_in_the_same_process_after_teardown():
    # A fresh interpreter: the process-global DeepSpeed state under test must not be pytest's own.
    code = textwrap.dedent(
        f"""
        import deepspeed, torch
        from scaling.distributed.env import LaunchEnv
        from scaling.engine import dist as dist_setup

        config = {{"train_micro_batch_size_per_gpu": 1, "zero_optimization": {{"stage": 3}},
                   "zero_allow_untested_optimizer": True}}
        for attempt in range(2):
            dist_setup.init_process_group(LaunchEnv(master_port={[free_port(), free_port()]}[attempt]), timeout_s=60)
            model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 3))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
            engine.backward(engine(torch.ones(2, 4)).sum())
            engine.step()
            engine.destroy()
            dist_setup.teardown()
        print("two runs ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0 and "two runs ok" in result.stdout, result.stderr[-3000:]


def test_a_run_started_here_uses_its_own_port_not_one_left_in_the_environment():
    with socket.socket() as busy:  # what an earlier run in this environment left behind, still taken
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        code = textwrap.dedent(
            f"""
            import os
            from scaling.distributed.env import LaunchEnv
            from scaling.engine import dist as dist_setup

            os.environ["MASTER_PORT"] = "{taken}"
            dist_setup.init_process_group(LaunchEnv(master_port={free_port()}), timeout_s=60)
            dist_setup.teardown()
            print("own port ok")
            """
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0 and "own port ok" in result.stdout, result.stderr[-3000:]
