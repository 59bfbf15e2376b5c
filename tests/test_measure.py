"""Measuring one scenario: the config handed to its own process, and a failing child reported with its exit code.

Run: `.venv/bin/python -m pytest -q tests/test_measure.py`
"""

from __future__ import annotations

import pytest
import yaml
from toy import toy_config, write_config

from thawing.config import load_config
from thawing.errors import ThawingError
from thawing.measure import config_yaml, train_isolated
from thawing.training.stages import stage_configs


def test_the_child_gets_the_config_as_set_so_presets_keep_their_own_epochs(tiny_bert_dir, tmp_path):
    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment", "qtype"), schedule="heads")
    del raw["train"]["epochs"]  # unset: the heads preset trains its own 4 epochs, not train.epochs' default
    config = load_config(write_config(raw, tmp_path / "c.yaml"))
    (tmp_path / "child.yaml").write_text(config_yaml(config))
    child = load_config(tmp_path / "child.yaml")
    assert child == config and "epochs" not in child.train.model_fields_set
    assert [s.epochs for s in stage_configs(child, 2)] == [s.epochs for s in stage_configs(config, 2)] == [4]
    assert list(yaml.safe_load(config_yaml(config))["tasks"]) == ["sentiment", "qtype"]  # their order seeds batches


def test_a_failing_child_is_reported_with_its_exit_code(tiny_bert_dir, tmp_path):
    config = load_config(write_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",)), tmp_path / "c.yaml"))
    (tmp_path / "data" / "sent_train.jsonl").write_text("not json\n")  # fails in the child, as a user error
    with pytest.raises(ThawingError, match="failed with exit code 2") as caught:
        train_isolated(config, str(tmp_path / "run"), tmp_path)
    assert caught.value.exit_code == 2
    assert not list(tmp_path.glob(".scenario-*"))  # its config and measurement files are gone
