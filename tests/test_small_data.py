"""Runs whose dev split is too small to choose by (`train.small_data`, training/small_data.py): every stage runs its
epochs (at least `min_updates` updates), with no plateau stop and no best-epoch selection, the plan never stops early,
and untrained linear heads start from the class centroids. Runs with a large enough dev split are untouched."""

from __future__ import annotations

import numpy as np
from toy import toy_config

from thawing.api import load
from thawing.config import parse_config
from thawing.training.loop import train
from thawing.training.small_data import scaled_epochs

# A plan whose second stage cannot beat the first on dev: its heads LR is tiny, so the plan's plateau would stop it.
PLAN = [
    {"name": "one", "train": ["heads"], "epochs": 1, "lr": {"heads": 3e-2}, "early_stopping": {"patience": 1}},
    {"name": "two", "train": ["heads"], "epochs": 1, "lr": {"heads": 1e-9}, "early_stopping": {"patience": 1}},
]


def _run(model_dir, tmp_path, name: str, small_data: dict, **extra):
    raw = toy_config(model_dir, tmp_path / name, tasks=("sentiment", "qtype"), **extra)
    raw["train"]["small_data"] = small_data
    return train(parse_config(raw), run_dir=str(tmp_path / name / "run"))


def _stages(run) -> list[dict]:
    return run.read_json(run.stages)


def test_scaled_epochs_reach_the_minimum_number_of_updates():
    assert scaled_epochs(4, 8, 50) == 25.0  # 8 updates in 4 epochs: 25 epochs give 50
    assert scaled_epochs(4, 80, 50) == 4  # enough already: unchanged
    assert scaled_epochs(1, 3, 50) == 17.0  # rounded up to whole epochs
    assert scaled_epochs(0, 0, 50) == 0


def test_small_dev_runs_every_stage_for_at_least_min_updates(tiny_bert_dir, tmp_path):
    # The toy dev splits hold a handful of examples, far below min_dev 50.
    run = _run(tiny_bert_dir, tmp_path, "small", {"min_dev": 50, "min_updates": 12}, schedule=PLAN)
    stages = _stages(run)
    assert [s["stage"] for s in stages] == ["one", "two"]
    assert all(s["updates"] >= 12 and s["stopped"] == "completed" for s in stages), stages
    assert all("epochs_scaled" in s for s in stages)


def test_a_large_enough_dev_split_keeps_the_plain_rules(tiny_bert_dir, tmp_path):
    run = _run(tiny_bert_dir, tmp_path, "plain", {"min_dev": 0}, schedule=PLAN)
    stages = _stages(run)
    assert "epochs_scaled" not in stages[0] and stages[0]["updates"] < 12
    assert "plan stopped" in stages[-1]["stopped"]  # the same plan, judged by dev, stops at stage two


def test_centroid_init_starts_heads_at_the_frozen_baseline(tiny_bert_dir, tmp_path):
    # Heads at a learning rate too small to move them end where they started: with centroid_init, exactly where the
    # frozen (nearest-centroid) run ends; without it, at a random head.
    still = [{"name": "heads", "train": ["heads"], "epochs": 1, "lr": {"heads": 1e-12}}]
    frozen = _run(tiny_bert_dir, tmp_path, "frozen", {"min_dev": 50}, schedule="frozen")
    centroid = _run(tiny_bert_dir, tmp_path, "centroid", {"min_dev": 50, "min_updates": 2}, schedule=still)
    random = _run(tiny_bert_dir, tmp_path, "random", {"min_dev": 50, "min_updates": 2, "centroid_init": False},
                  schedule=still)
    texts = ["I loved this film", "what a dull and boring mess", "Where is the station?"]
    probs = {name: np.array([[p for _, p in sorted(row["probs"].items())] for row in
                             load(run.path / "final").predict(texts, task="sentiment")])
             for name, run in (("frozen", frozen), ("centroid", centroid), ("random", random))}
    # The same ranking of classes, with the sharper softmax of the scaled start (training/paths.py, centroid_heads)
    np.testing.assert_array_equal(probs["centroid"].argsort(axis=1), probs["frozen"].argsort(axis=1))
    assert probs["centroid"].max(axis=1).min() > probs["frozen"].max(axis=1).min()
    assert not np.allclose(probs["random"], probs["frozen"], atol=1e-3)


def test_settings_that_would_do_nothing_are_refused():
    import pytest
    from pydantic import ValidationError

    from thawing.config import SmallDataConfig

    with pytest.raises(ValidationError, match="no effect with min_dev 0"):
        SmallDataConfig(min_dev=0, min_updates=12)
    assert SmallDataConfig(min_dev=0, min_updates=50, centroid_init=True).min_dev == 0  # defaults, as config.yaml
