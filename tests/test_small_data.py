"""Runs whose dev split is too small to choose by (`train.small_data`, training/small_data.py): every stage runs its
epochs (at least `min_updates` updates), with no plateau stop and no best-epoch selection, the plan never stops early,
untrained linear heads start from the class centroids, and a heads-only stage trains them only where cross-validation
on train (training/head_start.py) says training beats the centroids. Runs with a large enough dev split are
untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from toy import toy_config

from thawing.api import load
from thawing.config import HeadConfig, TrainConfig, parse_config
from thawing.task_types import TASK_TYPES
from thawing.task_types.heads import Head
from thawing.training.features import CachedSplit
from thawing.training.head_start import compare, cross_validate, stratified_folds
from thawing.training.loop import train
from thawing.training.small_data import raised_epochs
from thawing.training.stages import Stage

# A plan whose second stage cannot beat the first on dev: its heads LR is tiny, so the plan's plateau would stop it.
PLAN = [
    {"name": "one", "train": ["heads"], "epochs": 1, "lr": {"heads": 3e-2}, "early_stopping": {"patience": 1}},
    {"name": "two", "train": ["heads"], "epochs": 1, "lr": {"heads": 1e-9}, "early_stopping": {"patience": 1}},
]


def _run(model_dir, tmp_path, name: str, small_data: dict, head_init: str = "centroids", repeat: int = 1, **extra):
    """A toy run of sentiment and qtype; `repeat` writes each training row that many times (the toy tasks have 16
    and 12 rows, under the head check's 30)."""
    raw = toy_config(model_dir, tmp_path / name, tasks=("sentiment", "qtype"), **extra)
    for task in raw["tasks"].values():
        rows = Path(task["data"]["train"]).read_text()
        Path(task["data"]["train"]).write_text(rows * repeat)
    raw["train"]["small_data"] = small_data
    raw["train"]["head_init"] = head_init
    return train(parse_config(raw), run_dir=str(tmp_path / name / "run"))


def _stages(run) -> list[dict]:
    return run.read_json(run.stages)


def test_raised_epochs_reach_the_minimum_number_of_updates():
    assert raised_epochs(4, 8, 50) == 25.0  # 8 updates in 4 epochs: 25 epochs give 50
    assert raised_epochs(4, 80, 50) == 4  # enough already: unchanged
    assert raised_epochs(1, 3, 50) == 17.0  # rounded up to whole epochs
    assert raised_epochs(0, 0, 50) == 0


def test_small_dev_runs_every_stage_for_at_least_min_updates(tiny_bert_dir, tmp_path):
    # The toy dev splits hold a handful of examples, far below min_dev 50. Random heads: with centroid starts, the
    # heads-only first stage would train only where cross-validation says so (tested below).
    run = _run(tiny_bert_dir, tmp_path, "small", {"min_dev": 50, "min_updates": 12}, head_init="random",
               schedule=PLAN)
    stages = _stages(run)
    assert [s["stage"] for s in stages] == ["one", "two"]
    assert all(s["updates"] >= 12 and s["stopped"] == "completed" for s in stages), stages
    assert all(s["epochs_run"] > 1 for s in stages)  # raised from the plan's 1 epoch


def test_a_large_enough_dev_split_keeps_the_plain_rules(tiny_bert_dir, tmp_path):
    run = _run(tiny_bert_dir, tmp_path, "plain", {"min_dev": 0}, schedule=PLAN)
    stages = _stages(run)
    assert stages[0]["epochs_run"] <= 1 and stages[0]["updates"] < 12
    assert "plan stopped" in stages[-1]["stopped"]  # the same plan, judged by dev, stops at stage two


def _probs(run, texts: list[str]) -> np.ndarray:
    rows = load(run.path / "final").predict(texts, task="sentiment")
    return np.array([[p for _, p in sorted(row["probs"].items())] for row in rows])


TEXTS = ["I loved this film", "what a dull and boring mess", "Where is the station?"]


def test_centroid_init_starts_heads_at_the_frozen_baseline(tiny_bert_dir, tmp_path):
    # Heads (and a top layer, so that the stage is not heads-only and trains as planned) at a learning rate too small
    # to move them end where they started: with centroid_init, where the frozen (nearest-centroid) run ends, with a
    # sharper softmax; without it, at a random head.
    still = [{"name": "still", "train": ["heads", "layers[-1:]"], "epochs": 1, "lr": {"heads": 1e-12,
                                                                                       "encoder": 1e-12}}]
    frozen = _run(tiny_bert_dir, tmp_path, "frozen", {"min_dev": 50}, schedule="frozen")
    centroid = _run(tiny_bert_dir, tmp_path, "centroid", {"min_dev": 50, "min_updates": 2}, schedule=still)
    random = _run(tiny_bert_dir, tmp_path, "random", {"min_dev": 50, "min_updates": 2}, head_init="random",
                  schedule=still)
    probs = {name: _probs(run, TEXTS) for name, run in (("frozen", frozen), ("centroid", centroid), ("random", random))}
    # The same ranking of classes, with the sharper softmax of the scaled start (training/paths.py, scale_head)
    np.testing.assert_array_equal(probs["centroid"].argsort(axis=1), probs["frozen"].argsort(axis=1))
    assert probs["centroid"].max(axis=1).min() > probs["frozen"].max(axis=1).min()
    assert not np.allclose(probs["random"], probs["frozen"], atol=1e-3)
    assert "head_check" not in _stages(centroid)[0]


def test_a_heads_only_stage_that_cannot_beat_the_centroids_trains_nothing(tiny_bert_dir, tmp_path):
    # At a rate that cannot move them, trained heads tie the centroids on every fold; a tie keeps the centroids, and
    # the run ends exactly where `frozen` does.
    still = [{"name": "heads", "train": ["heads"], "epochs": 1, "lr": {"heads": 1e-12}}]
    frozen = _run(tiny_bert_dir, tmp_path, "frozen4", {"min_dev": 50}, schedule="frozen", repeat=4)
    kept = _run(tiny_bert_dir, tmp_path, "kept", {"min_dev": 50, "min_updates": 2}, schedule=still, repeat=4)
    stage = _stages(kept)[0]
    assert stage["updates"] == 0 and stage["stopped"] == "no training (frozen)"
    for check in stage["head_check"].values():
        assert check["folds"] >= 2 and check["trained"] == check["centroid"] and check["train"] is False
    np.testing.assert_allclose(_probs(kept, TEXTS), _probs(frozen, TEXTS), atol=1e-6)
    assert kept.read_json(kept.results)["score"] == frozen.read_json(frozen.results)["score"]


def test_under_thirty_examples_the_check_keeps_the_centroids_without_fitting(tiny_bert_dir, tmp_path):
    # 16 and 12 training rows, at a rate that would move the heads: too few for the check to tell, so no fold is
    # fitted and the stage trains nothing.
    fast = [{"name": "heads", "train": ["heads"], "epochs": 1, "lr": {"heads": 3e-2}}]
    kept = _run(tiny_bert_dir, tmp_path, "few", {"min_dev": 50, "min_updates": 2}, schedule=fast)
    stage = _stages(kept)[0]
    assert stage["updates"] == 0
    assert {t: (c["folds"], c["train"]) for t, c in stage["head_check"].items()} == {"sentiment": (0, False),
                                                                                     "qtype": (0, False)}
    assert "too few to tell" in stage["head_check"]["sentiment"]["reason"]


# ------------------------------------------------------------------------------------------- cross-validation


def test_stratified_folds_give_every_fold_each_class_share():
    labels = torch.tensor([0] * 8 + [1] * 5 + [2] * 3)
    folds = stratified_folds(labels, 3, seed=0)
    for fold in range(3):
        counts = torch.bincount(labels[folds == fold], minlength=3).tolist()
        assert counts[0] in (2, 3) and counts[1] in (1, 2) and counts[2] == 1
    assert torch.equal(folds, stratified_folds(labels, 3, seed=0))
    assert not torch.equal(folds, stratified_folds(labels, 3, seed=1))


def _check(features, labels, lr: float, rng_seed: int | None = None) -> dict:
    kind = TASK_TYPES["classification"]
    head = Head(features.shape[1], int(labels.max()) + 1, HeadConfig(type="linear", dropout=0.0))
    if rng_seed is not None:  # after the head's own random initialization
        torch.manual_seed(rng_seed)
    stage = Stage(name="heads", trainable=["head:t"], lrs={"head:t": lr}, epochs=30, warmup=0.1, lr_schedule="linear",
                  eval_every="epoch")
    return cross_validate(head, kind, CachedSplit(features, labels), stage, "head:t",
                          TrainConfig(batch_size=8, seed=0))


def test_cross_validation_prefers_training_where_the_centroids_misplace_the_boundary():
    # Two classes split by y = 0, but shifted along x: the centroids' bisector cuts through both classes, a trained
    # linear head separates them.
    x = torch.linspace(-3, 3, 20)
    upper, lower = torch.stack([x, torch.full_like(x, 0.3)], 1), torch.stack([x + 4, torch.full_like(x, -0.3)], 1)
    features = torch.cat([upper, lower])
    labels = torch.tensor([0] * 20 + [1] * 20)
    check = _check(features, labels, lr=0.1)
    assert check["folds"] == 5 and check["trained"] - check["centroid"] > check["standard_error"] > 0
    assert check["train"] is True


def test_cross_validation_keeps_the_centroids_on_a_tie_and_leaves_the_random_state_alone():
    features, labels = torch.randn(30, 4), torch.tensor([0, 1, 2] * 10)
    torch.manual_seed(7)
    before = torch.rand(1)
    check = _check(features, labels, lr=0.0, rng_seed=7)
    assert check["trained"] == check["centroid"] and check["train"] is False
    assert torch.equal(torch.rand(1), before)


def test_training_must_win_by_more_than_one_standard_error():
    none = torch.zeros(43, dtype=torch.bool)
    one, two = none.clone(), none.clone()
    one[0] = True
    two[:2] = True
    assert compare(one, none)["train"] is False  # one example in 43: exactly one standard error, not more
    assert compare(two, none)["train"] is True
    assert compare(none, none) == {"centroid": 0.0, "trained": 0.0, "standard_error": 0.0, "train": False}
    swapped = two.clone()
    swapped[2:4] = True  # the centroids get those two right, and two more: training loses
    assert compare(two, swapped)["train"] is False


def test_cross_validation_needs_two_examples_of_every_class():
    check = _check(torch.randn(31, 4), torch.tensor([0, 1] * 15 + [2]), lr=0.1)
    assert check["folds"] == 0 and check["train"] is True  # cannot check: the stage trains as planned
    assert _check(torch.randn(29, 4), torch.tensor([0, 1, 2] * 9 + [0, 1]), lr=0.1)["train"] is False  # too few


def test_settings_that_would_do_nothing_are_refused():
    from pydantic import ValidationError

    from thawing.config import SmallDataConfig

    with pytest.raises(ValidationError, match="no effect with min_dev 0"):
        SmallDataConfig(min_dev=0, min_updates=12)
    with pytest.raises(ValidationError, match="'dev_rows' has no effect with min_dev 0"):
        SmallDataConfig(min_dev=0, dev_rows=3)
    assert SmallDataConfig(min_dev=0, min_updates=50).min_dev == 0  # defaults, as config.yaml writes them
    with pytest.raises(ValidationError, match="train.head_init"):  # the key moved: say where
        SmallDataConfig(centroid_init=True)


# ------------------------------------------------------------------------------ centroid starts on any data size


def _dev_evals(run, stage: str) -> list[dict]:
    return [m for m in run.read_metrics()
            if m.get("stage") == stage and m.get("task") == "*" and m.get("split") == "dev"]


def test_on_plain_runs_the_centroid_start_is_the_stage_best_until_training_beats_it(tiny_bert_dir, tmp_path):
    # min_dev 0: plateau stops and best-state selection are on. The stage evaluates its centroid start before the
    # first update; at a rate that cannot move the heads no later evaluation beats it, so the stage's best is that
    # start (step 0) and the run ends at the frozen ranking. Started at random, there is no evaluation before training.
    still = [{"name": "heads", "train": ["heads"], "epochs": 2, "lr": {"heads": 1e-12}}]
    frozen = _run(tiny_bert_dir, tmp_path, "frozen", {"min_dev": 0}, schedule="frozen")
    centroid = _run(tiny_bert_dir, tmp_path, "centroid", {"min_dev": 0}, schedule=still)
    random = _run(tiny_bert_dir, tmp_path, "random", {"min_dev": 0}, head_init="random", schedule=still)
    assert [m["epoch"] for m in _dev_evals(centroid, "heads")] == [0.0, 1.0, 2.0]
    assert [m["epoch"] for m in _dev_evals(random, "heads")] == [1.0, 2.0]
    stage = _stages(centroid)[0]
    assert stage["updates"] > 0 and stage["best_step"] == 0, stage
    assert "head_check" not in stage  # cross-validation is for small data only
    np.testing.assert_array_equal(_probs(centroid, TEXTS).argsort(axis=1), _probs(frozen, TEXTS).argsort(axis=1))



# ------------------------------------------------------------------------------ the dev carve of a small train split


def test_a_small_runs_carved_dev_keeps_one_row_and_evaluation_carves_it_again(tiny_bert_dir, tmp_path):
    """qtype's 36 training rows and no dev split: a 10% carve (4 rows) could not choose anyway, so the carve keeps
    `dev_rows` (1) and 35 rows train; `thawing evaluate`'s dev split, carved again from the run's config.yaml, is
    that same row."""
    from thawing.config import load_config
    from thawing.model.inference import split_examples

    run = _run(tiny_bert_dir, tmp_path, "carve", {"min_dev": 50, "min_updates": 12}, repeat=3,
               schedule=PLAN[:1])
    lines = [m for m in run.read_metrics() if m.get("task") == "qtype" and m.get("split") == "dev"]
    tasks = run.read_json(run.tasks)
    config = load_config(run.path / "config.yaml")
    assert config.tasks["qtype"].dev_fraction is None
    dev = split_examples(config, "qtype", tasks["qtype"]["labels"], "dev")
    train_rows = split_examples(config, "qtype", tasks["qtype"]["labels"], "train")
    assert len(dev) == 1 and len(train_rows) == 35 and lines  # evaluated on it during training
    assert split_examples(config, "qtype", tasks["qtype"]["labels"], "dev")[0].text == dev[0].text
