"""Measuring one scenario: the config handed to its own process, and a failing child reported with its exit code.

Run: `.venv/bin/python -m pytest -q tests/test_measure.py`
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from toy import toy_config, write_config

from thawing.config import load_config
from thawing.errors import ThawingError
from thawing.study.measure import config_yaml, train_isolated
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


def test_sigterm_to_the_study_stops_its_scenario_after_a_checkpoint(tiny_bert_dir, tmp_path):
    """Only the study's own process gets the signal (as with `kill PID`): it passes it on, the scenario's process
    checkpoints and stops, and the study exits with 143, leaving no process behind."""
    # The config's own plan, a long stage without plateau stopping (the full preset stops after two evaluations
    # without gain): the signal must find it training.
    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",),
                     schedule=[{"name": "full", "train": ["all"], "epochs": 200}])
    raw["train"].update(eval_every=2)
    path = write_config(raw, tmp_path / "c.yaml")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    study = subprocess.Popen([sys.executable, "-m", "thawing", "study", str(path), "--scenarios", "config",
                              "--study-dir", str(tmp_path / "s")], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, deadline = tmp_path / "s" / "config" / "metrics.jsonl", time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text()) and study.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert study.poll() is None, study.stderr.read()
    study.send_signal(signal.SIGTERM)
    _, err = study.communicate(timeout=120)
    assert study.returncode == 143, err
    assert "SIGTERM: training stopped in stage 'full'" in err and "thawing train --resume" in err
    run = tmp_path / "s" / "config"
    assert (run / "checkpoints").is_dir() and not (run / "results.json").exists()
    with pytest.raises(ProcessLookupError):  # nothing left in the study's process group
        os.killpg(study.pid, 0)
