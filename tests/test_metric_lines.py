"""Reading metrics.jsonl by kind: where stages start, each task's share of the updates, a probe's headline.

Run: `.venv/bin/python -m pytest -q tests/test_metric_lines.py`
"""

from __future__ import annotations

from thawing.store.metric_lines import of_split, probe_headline, probe_points, stage_starts, task_shares


def dev(stage, step, task="*", value=0.5):
    return {"stage": stage, "step": step, "epoch": 1.0, "split": "dev", "task": task, "metrics": {"score": value}}


def train(stage, step, task, **extra):
    return {"stage": stage, "step": step, "split": "train", "task": task, "loss": 1.0, "lr": {"head:a": 1e-3},
            "examples_per_s": 10.0, "time": 0.0, **extra}


def probe(stage, step, name="stsb", **metrics):
    return {"stage": stage, "step": step, "epoch": None, "split": "probe", "task": name, "metrics": metrics}


def test_stages_start_where_the_one_before_ended():
    stages = [{"stage": "heads", "updates": 12}, {"stage": "top", "updates": 8}, {"stage": "all", "updates": 5}]
    # heads ended at step 10 (its counter says 12: the lines, which carry the steps, win), top at step 18
    lines = [probe("start", 0), dev("heads", 5), dev("heads", 10), probe("heads", 10), train("top", 11, "a"),
             dev("top", 18), dev("all", 20)]
    assert stage_starts(stages, lines) == [(0, "heads"), (10, "top"), (18, "all")]
    # a stage with no line of its own: its updates carry the count on
    assert stage_starts(stages, [dev("heads", 10)]) == [(0, "heads"), (10, "top"), (18, "all")]
    assert stage_starts(stages, []) == [(0, "heads"), (12, "top"), (20, "all")]


def test_two_stages_of_one_name_fall_back_to_update_counts():
    stages = [{"stage": "s", "updates": 4}, {"stage": "s", "updates": 4}, {"stage": "t", "updates": 1}]
    assert stage_starts(stages, [dev("s", 3), dev("s", 8)]) == [(0, "s"), (4, "s"), (8, "t")]


def test_task_shares_count_updates_only_when_the_lines_can_tell():
    one_per_update = [train("heads", 1, "a"), train("heads", 2, "b"), train("heads", 3, "a"), train("top", 4, "a")]
    assert task_shares(one_per_update) == {"a": 0.75, "b": 0.25}
    # every 10 updates, one line per task that ran: lines say nothing about how many updates each task had
    coarse = [train("heads", 10, "a"), train("heads", 10, "b"), train("heads", 20, "a"), train("heads", 20, "b")]
    assert task_shares(coarse) is None
    counted = [train("heads", 10, "a", batches=9), train("heads", 10, "b", batches=1)]
    assert task_shares(counted) == {"a": 0.9, "b": 0.1}
    assert task_shares([dev("heads", 1)]) is None


def test_probe_headline_and_points():
    assert probe_headline({"spearman": 0.7, "spearman_retention": 0.95}) == ("spearman_retention", 0.95)
    assert probe_headline({"drift": 0.1, "weight_norm_change": {"layers.0": 0.2}}) == ("drift", 0.1)
    assert probe_headline({"accuracy": 0.5}) is None
    lines = [probe("start", 0, spearman_retention=1.0), dev("heads", 3), probe("heads", 3, spearman_retention=0.9)]
    assert probe_points(lines) == {"stsb": [("start", 0, {"spearman_retention": 1.0}),
                                            ("heads", 3, {"spearman_retention": 0.9})]}
    assert of_split([{"stage": "x", "step": 1, "task": "a", "metrics": {}}], "dev")  # old lines without a split
