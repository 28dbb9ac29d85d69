"""Experiment trackers, each against its real backend in offline mode: csv (OUTPUT/metrics.csv), wandb
(WANDB_MODE=offline, read back from the run file it writes), mlflow (a file: store) and TensorBoard (event
files read back); the eval console line, the loss plot and `scaling plot`."""

from __future__ import annotations

import csv
import json
import logging
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from scaling.config.sections import LogConfig
from scaling.engine.metrics import MetricsSink, read_metrics
from scaling.engine.plot import plot_run
from scaling.engine.trackers import CSV_FILE, IDS_FILE, open_tracker, tracker_problems

RECORDS = [
    {"step": 1, "loss": 4.0, "lr": 1e-3, "note": "text is not a metric", "flag": True},
    {"step": 2, "loss": 3.5, "lr": 2e-3},
    {"step": 2, "eval_loss": 3.75, "eval_perplexity": 42.5},
    {"step": 3, "loss": float("nan"), "lr": 3e-3},
]


def _sink(tmp_path: Path, *trackers: str, start_step: int = 0) -> MetricsSink:
    cfg = LogConfig(tensorboard="tensorboard" in trackers, progress=False, report_to=list(trackers))
    return MetricsSink(cfg, tmp_path, active=True, total_steps=3, start_step=start_step, run_config={"x": 1})


def test_csv_tracker_widens_its_header_and_drops_rows_past_a_resumed_step(tmp_path):
    sink = _sink(tmp_path, "csv")
    for record in RECORDS:
        sink.log(record)
    sink.close()
    rows = list(csv.DictReader((tmp_path / CSV_FILE).open()))
    assert [r["step"] for r in rows] == ["1", "2", "2", "3"]
    assert rows[0]["loss"] == "4.0" and rows[2]["eval_loss"] == "3.75" and rows[2]["loss"] == ""
    assert "note" not in rows[0] and "flag" not in rows[0] and rows[3]["loss"] == ""  # nan is not written
    resumed = _sink(tmp_path, "csv", start_step=1)  # a resume from step 1 repeats steps 2 and 3
    resumed.log({"step": 2, "loss": 3.4})
    resumed.close()
    rows = list(csv.DictReader((tmp_path / CSV_FILE).open()))
    assert [(r["step"], r["loss"]) for r in rows] == [("1", "4.0"), ("2", "3.4")]


def _wandb_history(run_file: Path) -> list[tuple[int, dict[str, float]]]:
    """History records of a .wandb file (W&B's leveldb-style log of protobuf Records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, pos, block = run_file.read_bytes(), 7, 32768
    records, pending = [], b""
    while pos + 7 <= len(raw):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += room
            continue
        pending += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            records.append(pending)
            pending = b""
    out = []
    for data in records:
        record = pb.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            out.append((record.history.step.num, {k: v for k, v in items.items() if not k.startswith("_")}))
    return out


def test_wandb_offline_run_holds_every_logged_metric_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-dir").mkdir()
    run = tmp_path / "run"
    sink = _sink(run, "wandb")
    for record in RECORDS:
        sink.log(record)
    sink.close()
    run_id = json.loads((run / IDS_FILE).read_text())["wandb"]
    (run_file,) = (tmp_path / "wandb-dir").glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    history = _wandb_history(run_file)
    assert history == [
        (1, {"train/loss": 4.0, "train/lr": 1e-3}),
        (2, {"train/loss": 3.5, "train/lr": 2e-3, "eval/loss": 3.75, "eval/perplexity": 42.5}),
        (3, {"train/lr": 3e-3}),
    ]
    tracker = open_tracker("wandb", run, start_step=3, run_config={})  # a resume continues the same run
    tracker.close()
    assert json.loads((run / IDS_FILE).read_text())["wandb"] == run_id


def test_mlflow_file_store_holds_params_and_metric_history(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert any("MLFLOW_ALLOW_FILE_STORE" in p for p in tracker_problems(["mlflow"]))  # refused before launch
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert tracker_problems(["mlflow"]) == []
    run = tmp_path / "run"
    sink = _sink(run, "mlflow")
    for record in RECORDS:
        sink.log(record)
    sink.close()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    run_id = json.loads((run / IDS_FILE).read_text())["mlflow"]
    info = client.get_run(run_id)
    assert info.info.status == "FINISHED" and info.info.run_name == "run"
    assert info.data.params == {"x": "1"}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [
        (1, 4.0),
        (2, 3.5),
    ]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/perplexity")] == [(2, 42.5)]
    resumed = open_tracker("mlflow", run, start_step=3, run_config={})  # a resume continues the same run
    resumed.log(4, {"loss": 3.0})
    resumed.close()
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 4]
    fresh = open_tracker("mlflow", run, start_step=0, run_config={})  # a fresh start is another run
    fresh.close()
    assert json.loads((run / IDS_FILE).read_text())["mlflow"] not in (run_id, None)


def test_tensorboard_events_hold_the_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = _sink(tmp_path, "tensorboard")
    for record in RECORDS:
        sink.log(record)
    sink.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 4.0), (2, 3.5)]
    assert [(e.step, e.value) for e in events.Scalars("eval/loss")] == [(2, 3.75)]


def test_eval_results_reach_the_console(tmp_path, caplog):
    sink = _sink(tmp_path)
    with caplog.at_level(logging.INFO, logger="scaling"):
        sink.log({"step": 20, "eval_loss": 2.34567, "eval_perplexity": 10.4444})
        sink.log({"step": 30, "eval_loss": 0.5, "eval_accuracy": 0.875})
    sink.close()
    assert "eval @ step 20: loss 2.3457, perplexity 10.44" in caplog.text
    assert "eval @ step 30: loss 0.5000, accuracy 0.875" in caplog.text


def test_every_run_ends_with_a_loss_plot_and_scaling_plot_redraws_it(tmp_path):
    import matplotlib.image

    sink = _sink(tmp_path)
    for step in range(1, 31):
        sink.log({"step": step, "loss": 5.0 / step, "lr": 1e-3 * min(1, step / 5)})
        if step % 10 == 0:
            sink.log({"step": step, "eval_loss": 6.0 / step})
    sink.log({"step": 30, "loss": 0.1, "lr": 1e-4})  # a resume repeated step 30: the later record wins
    sink.close()
    plot = tmp_path / "plots" / "loss.png"
    height, width, _ = matplotlib.image.imread(plot).shape
    assert width > 600 and height > 400
    train = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert len(train) == 30 and train[-1]["loss"] == 0.1
    plot.unlink()
    from scaling.cli.main import cli

    result = CliRunner().invoke(cli, ["plot", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert plot.is_file() and str(plot) in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["plot", str(empty)])
    assert result.exit_code == 2 and "no metrics.jsonl" in result.output
    assert plot_run(empty) is None
