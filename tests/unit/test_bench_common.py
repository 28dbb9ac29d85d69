"""The benchmark suite's arithmetic and report (no timings asserted: benchmarks are scripts, not tests)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def test_alternate_flips_order_each_round():
    from bench.common import alternate

    assert alternate(["a", "b"], 3) == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]


def test_summary_and_paired_ratios():
    from bench.common import paired_ratios, steady_rate, summary

    assert summary([3, 1, 2]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert paired_ratios([2, 4], [1, 2]) == {"median": 2.0, "min": 2.0, "max": 2.0, "n": 2}
    assert steady_rate([0.0, 1.0, 1.5, 2.0], warmup=1) == pytest.approx(2.0)  # 2 steps in 1 s after warm-up
    assert math.isnan(summary([])["median"])


def test_mfu_matches_palm_formula():
    from scaling.engine.metrics import MfuMeter, datasheet_peak, flops_per_token

    # 6N + 12*L*H*Q*T
    assert flops_per_token(1_000, 2, 4, 16, 128) == 6_000 + 12 * 2 * 4 * 16 * 128
    assert datasheet_peak("NVIDIA H200") == 989e12
    assert datasheet_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert datasheet_peak("some cpu") is None
    meter = MfuMeter(flops_token=1e9, world_size=2, datasheet=1e12, measured=5e11)
    out = meter.record(tokens_per_s=1000.0)  # 1e12 FLOP/s over 2 devices: 50% of 1e12, 100% of 5e11
    assert out["mfu_pct"] == pytest.approx(50.0)
    assert out["mfu_pct_of_measured_matmul"] == pytest.approx(100.0)
    assert "989" not in meter.describe() and "GFLOP per token" in meter.describe()


def test_mfu_meter_is_off_without_gpu():
    import torch

    from scaling.engine.metrics import MfuMeter

    if torch.cuda.is_available():
        pytest.skip("GPU present")
    assert MfuMeter.for_model(torch.nn.Linear(2, 2), object(), 8, 1) is None


def test_report_renders_goals_from_results(tmp_path, monkeypatch):
    import bench.common as common
    import bench.report as report

    results = tmp_path / "results"
    results.mkdir()
    s = {"median": 1.0, "min": 0.9, "max": 1.1, "n": 2}
    stage = {
        "tokens_per_s": {"ours": s, "hand": s},
        "step_s": {"ours": s, "hand": s},
        "ratio_tokens_per_s": s,
        "wall_s_incl_startup": {"ours": s, "hand": s},
        "ratio_wall": s,
        "data_wait_pct": s,
        "met": True,
    }
    (results / "trainer_overhead.json").write_text(
        json.dumps(
            {
                "setup": {
                    "model": {"n_layer": 2, "n_embd": 8},
                    "seq_len": 8,
                    "micro_batch": 2,
                    "ranks": 2,
                    "precision": "fp32",
                    "steps": 4,
                    "warmup_steps_excluded": 1,
                    "repeats": 2,
                },
                "stages": {"zero2": stage},
                "nan_sigterm_allreduce": {"seconds_per_call": s, "share_of_fastest_step_pct": 0.1},
            }
        )
    )
    (results / "pipeline_bubble.json").write_text(json.dumps({"bubble": 0.2}))
    monkeypatch.setattr(report, "RESULTS", results)
    monkeypatch.setattr(report, "OUT", tmp_path / "BENCHMARKS.md")
    monkeypatch.setattr(
        common,
        "machine",
        lambda: {
            k: "x"
            for k in (
                "cpu",
                "cpus",
                "load_avg",
                "python",
                "torch",
                "deepspeed",
                "transformers",
                "datasets",
                "commit",
                "date_utc",
            )
        },
    )
    monkeypatch.setattr(report, "machine", common.machine)
    text = report.main().read_text()
    assert (
        "| trainer overhead zero2: tokens/s ours / hand-written DeepSpeed | >= 0.97 | 1.000 [0.900, 1.100] | met |"
        in text
    )
    assert "## pipeline_bubble" in text and '"bubble": 0.2' in text
    assert "not measured (no GPU lent to this task)" in text


def test_runner_lists_benchmarks(capsys):
    from bench.__main__ import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("trainer_overhead", "vs_hf_trainer", "input_pipeline", "memory", "gpu_check"):
        assert name in out
    assert main(["no-such-benchmark"]) == 2


def test_scaling_bench_lists_the_suite():
    """`scaling bench` runs `python -m bench` in the checkout it is started from (a child process)."""
    import subprocess

    result = subprocess.run([sys.executable, "-m", "scaling", "bench", "list"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "trainer_overhead" in result.stdout and "vs_hf_trainer" in result.stdout
