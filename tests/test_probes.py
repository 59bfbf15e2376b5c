"""Retention probes (similarity, transfer, drift), training records, and TensorBoard event files.

Run: `.venv/bin/python -m pytest -q tests/test_probes.py`
"""

from __future__ import annotations

import pytest
from toy import NEGATIVE, POSITIVE, QUESTIONS, toy_config, write_jsonl

from thawing.config import parse_config
from thawing.errors import ConfigError
from thawing.training import loop


def _probe_files(root):
    root.mkdir(parents=True, exist_ok=True)
    texts = POSITIVE + NEGATIVE + [q for q, _ in QUESTIONS]
    pairs = [{"sentence1": a, "sentence2": b, "score": float((i * 7) % 5)}
             for i, (a, b) in enumerate(zip(texts, texts[3:] + texts[:3], strict=True))]
    rows = [{"text": t, "label": "pos"} for t in POSITIVE] + [{"text": t, "label": "neg"} for t in NEGATIVE]
    return {
        "pairs": {"type": "similarity", "data": write_jsonl(root / "pairs.jsonl", pairs)},
        "polarity": {"type": "transfer", "data": write_jsonl(root / "polarity.jsonl", rows * 3),
                     "test_fraction": 0.3},
        "drift": {"type": "drift", "data": write_jsonl(root / "drift.jsonl", [{"text": t} for t in texts]),
                  "limit": 10},
    }


def _run(model_dir, root, schedule, **train):
    raw = toy_config(model_dir, root, tasks=("qtype",), schedule=schedule, probes=_probe_files(root / "probes"),
                     train={"batch_size": 4, "seed": 0, "log_every": 2, **train})
    return loop.train(parse_config(raw), run_dir=str(root / "run"))


def _probe_lines(run) -> list[dict]:
    return [m for m in run.read_metrics() if m["split"] == "probe"]


def test_a_frozen_encoder_keeps_everything_exactly(tiny_bert_dir, tmp_path):
    run = _run(tiny_bert_dir, tmp_path, [{"name": "heads", "train": ["heads"], "epochs": 2}])
    lines = _probe_lines(run)
    assert [(m["stage"], m["task"]) for m in lines] == [(s, p) for s in ("start", "heads")
                                                         for p in ("pairs", "polarity", "drift")]
    after = {m["task"]: m["metrics"] for m in lines if m["stage"] == "heads"}
    assert after["drift"]["drift"] == 0.0 and set(after["drift"]["weight_norm_change"].values()) == {0.0}
    assert after["pairs"]["spearman_retention"] == 1.0 and after["polarity"]["accuracy_retention"] == 1.0
    probes = run.read_json(run.results)["probes"]
    assert probes["pairs"]["spearman"] == probes["pairs"]["pretrained_spearman"]
    assert run.read_json(run.results)["probe_seconds"] > 0


def test_training_the_encoder_moves_the_probes(tiny_bert_dir, tmp_path):
    schedule = [{"name": "all", "train": ["all"], "epochs": 3, "lr": {"encoder": 1e-3}}]  # a first stage always counts
    run = _run(tiny_bert_dir, tmp_path, schedule)
    results = run.read_json(run.results)["probes"]
    assert set(results) == {"pairs", "polarity", "drift"}
    assert {"spearman", "pretrained_spearman", "spearman_retention"} <= set(results["pairs"])
    assert {"accuracy", "pretrained_accuracy", "accuracy_retention"} <= set(results["polarity"])
    assert results["drift"]["drift"] > 0 and results["pairs"]["spearman"] != results["pairs"]["pretrained_spearman"]
    assert any(v != 0 for v in results["drift"]["weight_norm_change"].values())
    stages = [m["stage"] for m in _probe_lines(run) if m["task"] == "drift"]
    assert stages[0] == "start" and stages[1:] == [s["stage"] for s in run.read_json(run.stages)]


def test_training_records_every_log_every_updates(tiny_bert_dir, tmp_path):
    run = _run(tiny_bert_dir, tmp_path, [{"name": "all", "train": ["all"], "epochs": 2}])
    records = [m for m in run.read_metrics() if m["split"] == "train"]
    updates = run.read_json(run.stages)[0]["updates"]
    assert [m["step"] for m in records] == list(range(2, updates + 1, 2))
    assert all(m["task"] == "qtype" and m["loss"] > 0 and m["examples_per_s"] > 0 for m in records)
    assert set(records[0]["lr"]) >= {"embeddings", "head:qtype"}


def test_tensorboard_event_files_hold_what_metrics_jsonl_holds(tiny_bert_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(tiny_bert_dir, tmp_path, [{"name": "all", "train": ["all"], "epochs": 2}], report_to=["tensorboard"])
    events = EventAccumulator(str(run.tracker_dir("tensorboard")))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/qtype/loss", "lr/head_qtype", "dev/qtype/accuracy", "probe/drift/drift"} <= tags
    losses = [m["loss"] for m in run.read_metrics() if m["split"] == "train"]
    assert [e.value for e in events.Scalars("train/qtype/loss")] == pytest.approx(losses)


@pytest.mark.parametrize("probe, message", [
    ({"type": "similarity", "data": "x.jsonl", "label_field": "y"}, "'label_field' does not apply"),
    ({"type": "drift", "data": {"train": "x.jsonl"}}, "give `data` as a path"),
    ({"type": "similarity", "data": "x.jsonl", "limit": {"train": 3}}, "per-split `limit`"),
    ({"type": "transfer", "data": {"train": "a.jsonl", "dev": "b.jsonl"}}, "no `dev`"),
])
def test_probe_keys_that_do_not_apply_are_refused(tiny_bert_dir, tmp_path, probe, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(toy_config(tiny_bert_dir, tmp_path, tasks=("qtype",), probes={"p": probe}))
