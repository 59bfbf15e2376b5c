"""Selectors, presets and per-group learning rates (pure, no training).

Run: `.venv/bin/python -m pytest -q tests/test_freezing.py`
"""

from __future__ import annotations

from collections import OrderedDict

import pytest

from thawing.config import parse_config
from thawing.errors import ConfigError
from thawing.model.freezing import select_groups
from thawing.training.stages import build_plan, preset

GROUPS = OrderedDict(
    (name, [])
    for name in ["embeddings"]
    + [f"layers.{i}" for i in range(6)]
    + ["norm", "pooler", "projection", "head:a", "head:ner"]
)


def test_selectors():
    assert select_groups(["heads"], GROUPS) == ["head:a", "head:ner"]
    assert select_groups(["layers[-2:]"], GROUPS) == ["layers.4", "layers.5", "norm"]
    assert select_groups(["layers[1:3]"], GROUPS) == ["layers.1", "layers.2"]
    assert select_groups(["all", "-head:ner", "-embeddings"], GROUPS) == [
        "layers.0",
        "layers.1",
        "layers.2",
        "layers.3",
        "layers.4",
        "layers.5",
        "norm",
        "projection",
        "head:a",
    ]
    assert "pooler" not in select_groups(["all"], GROUPS) and select_groups(["pooler"], GROUPS) == ["pooler"]
    assert select_groups(["encoder"], GROUPS) == ["embeddings"] + [f"layers.{i}" for i in range(6)] + ["norm"]


def test_unknown_selector_lists_valid_forms():
    with pytest.raises(ConfigError, match="layers\\[a:b\\]"):
        select_groups(["layer[-2:]"], GROUPS)


def test_freeze_scenarios():
    assert select_groups(["all", "-encoder"], GROUPS) == ["projection", "head:a", "head:ner"]
    assert select_groups(["all", "-encoder", "-projection"], GROUPS) == ["head:a", "head:ner"]
    assert "head:a" not in select_groups(["all", "-head:a"], GROUPS)
    assert select_groups(["all", "-all"], GROUPS) == []


def test_presets_scale_with_depth():
    minilm = preset("progressive", 6)
    assert [s.train for s in minilm[1:3]] == [
        ["heads", "projection", "layers[-2:]"],
        ["heads", "projection", "layers[-6:]"],
    ]
    stella = preset("progressive", 28)
    assert [s.train[-1] for s in stella[1:3]] == ["layers[-3:]", "layers[-14:]"]
    assert stella[-1].optional and stella[-1].train == ["all"]


def _config(**extra):
    return parse_config({"tasks": {"a": {"type": "classification", "data": {"train": "x.jsonl"}}}, **extra})


def test_optional_stage_runs_only_when_asked():
    assert [s.name for s in build_plan(_config(schedule="progressive"), GROUPS)] == ["heads", "top", "discriminative"]
    assert build_plan(_config(schedule="progressive"), GROUPS, run_optional=True)[-1].name == "full"


def test_discriminative_rates_decay_downwards():
    stage = build_plan(
        _config(
            schedule=[{"name": "d", "train": ["layers[-3:]", "embeddings"], "lr": {"encoder": 1.0}, "layer_decay": 0.5}]
        ),
        GROUPS,
    )[0]
    assert stage.lrs == {"embeddings": 0.125, "layers.3": 0.25, "layers.4": 0.5, "layers.5": 1.0, "norm": 1.0}


def test_freeze_all_is_a_frozen_stage():
    stage = build_plan(_config(freeze=["all"]), GROUPS)[0]
    assert stage.trainable == [] and stage.epochs == 0


def test_relative_data_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    from thawing.config import load_config

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "c.yaml").write_text(
        "tasks:\n  a:\n    type: classification\n    data: {train: ../data/train.jsonl}\n"
    )
    monkeypatch.chdir("/")
    config = load_config(tmp_path / "cfg" / "c.yaml")
    assert config.tasks["a"].data.train == str((tmp_path / "data" / "train.jsonl").resolve())
