"""Trackers through accelerate (`train.report_to`): TensorBoard, MLflow (a file store in the run) and W&B (offline)
receive the same scalars, and those are metrics.jsonl's records; a tracker whose package is missing is refused before
anything is written.

Run: `.venv/bin/python -m pytest -q tests/test_tracking.py`
"""

from __future__ import annotations

import json
import math

import pytest
from toy import toy_config

from thawing.config import parse_config
from thawing.errors import ConfigError
from thawing.training import loop
from thawing.training.tracking import scalars

SCHEDULE = [{"name": "heads", "train": ["heads"], "epochs": 2}, {"name": "all", "train": ["all"], "epochs": 1}]


def _expected(run) -> dict[str, list[tuple[int, float]]]:
    """What metrics.jsonl holds, as scalars by name: (step, value) in order, a shared training value once a step."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in run.read_metrics():
        for name, value in scalars(record).items():
            points = out.setdefault(name, [])
            if not (record["split"] == "train" and points and points[-1][0] == record["step"]
                    and not name.endswith("/loss")):
                points.append((record["step"], value))
    return out


def _tensorboard(run) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.tracker_dir("tensorboard")), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _mlflow(run, experiment: str) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=run.tracker_dir("mlruns").resolve().as_uri())
    [found] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(found.info.run_id, key),
                                                     key=lambda m: (m.step, m.timestamp))]
            for key in found.data.metrics}


def _wandb(folder) -> dict[str, list[tuple[int, float]]]:
    """The history an offline W&B run wrote (its .wandb file, read record by record)."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    [path] = folder.glob("wandb/offline-run-*/run-*.wandb")
    store = datastore.DataStore()
    store.open_for_scan(str(path))
    out: dict[str, list[tuple[int, float]]] = {}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") != "history":
            continue
        items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for key, value in items.items():
            if not key.startswith("_"):
                out.setdefault(key, []).append((items["_step"], value))
    return out


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        len(a[k]) == len(b[k]) and all(s == t and math.isclose(x, y, rel_tol=1e-6) for (s, x), (t, y) in
                                       zip(a[k], b[k], strict=True)) for k in a)


def test_tensorboard_mlflow_and_wandb_receive_what_metrics_jsonl_holds(tiny_bert_dir, tmp_path, monkeypatch):
    for name in ("tensorboard", "mlflow", "wandb"):
        pytest.importorskip(name)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment", "ner"), schedule=SCHEDULE,
                     train={"report_to": ["tensorboard", "mlflow", "wandb"], "log_every": 1})
    raw["name"] = "tracked"
    run = loop.train(parse_config(raw), run_dir=str(tmp_path / "run"))
    expected = _expected(run)
    assert "train/sentiment/loss" in expected and "dev/score" in expected and "lr/head_sentiment" in expected
    assert _close(_tensorboard(run), expected)
    assert _close(_mlflow(run, "tracked"), expected)
    assert _close(_wandb(run.path), expected)


def test_a_missing_tracker_package_is_refused_before_the_run_directory(tiny_bert_dir, tmp_path, monkeypatch):
    from accelerate.utils import imports

    monkeypatch.setattr(imports, "is_wandb_available", lambda: False)
    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), train={"report_to": ["wandb"]})
    with pytest.raises(ConfigError, match=r"train.report_to: wandb needs its package: pip install wandb"):
        loop.train(parse_config(raw), run_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
