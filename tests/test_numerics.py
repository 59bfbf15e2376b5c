"""Non-finite training: a run whose loss or gradients stop being finite stops with a clear message and writes no
final model; `train.nonfinite: skip` skips such updates up to a limit. Everything written is strict JSON.

Run: `.venv/bin/python -m pytest -q tests/test_numerics.py`
"""

from __future__ import annotations

import json

import pytest
from toy import toy_config, write_config
from typer.testing import CliRunner

from thawing.cli import app
from thawing.config import parse_config
from thawing.errors import NonFiniteError
from thawing.store.run_dir import RunDir
from thawing.training import loop

# Rates no model survives: Adam moves every weight by about the rate on each update.
EXPLODING = {"name": "all", "train": ["all"], "epochs": 2, "lr": {"heads": 1e12, "encoder": 1e12}, "warmup": 0}


def _raw(model_dir, root, **train):
    return toy_config(model_dir, root, tasks=("sentiment", "ner"), schedule=[EXPLODING],
                      train={"batch_size": 4, "seed": 0, "grad_clip": None, **train})


def test_an_exploding_run_stops_with_exit_2_naming_stage_step_and_task_and_writes_no_final_model(
    tiny_bert_dir, tmp_path
):
    config = write_config(_raw(tiny_bert_dir, tmp_path, eval_every=1), tmp_path / "c.yaml")
    result = CliRunner().invoke(app, ["train", str(config), "--run-dir", str(tmp_path / "run")])
    assert isinstance(result.exception, NonFiniteError), result.output
    message = str(result.exception)
    assert "stage 'all'" in message and "(step " in message and "the loss of task '" in message, message
    assert "train.nonfinite: skip" in message
    run = RunDir(tmp_path / "run")
    assert not run.final.exists() and not run.results.exists()
    assert not run.checkpoints.exists() and "it had written no checkpoint yet" in message  # none claimed kept
    assert run.metrics.read_text()  # an evaluation ran on the exploded weights before the loss went non-finite
    for line in run.metrics.read_text().splitlines():  # strict JSON: NaN would not parse with this hook
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))


def test_skip_counts_skipped_updates_and_stops_at_the_limit(tiny_bert_dir, tmp_path):
    with pytest.raises(NonFiniteError, match=r"after 3 skipped updates \(train.nonfinite_limit\)"):
        loop.train(parse_config(_raw(tiny_bert_dir, tmp_path, nonfinite="skip", nonfinite_limit=3)),
                   run_dir=str(tmp_path / "run"))


def test_finite_training_is_untouched_by_the_guard(tiny_bert_dir, tmp_path):
    raw = _raw(tiny_bert_dir, tmp_path)
    raw["schedule"] = [{**EXPLODING, "lr": {"heads": 1e-3, "encoder": 1e-4}}]
    run = loop.train(parse_config(raw), run_dir=str(tmp_path / "run"))
    assert "nonfinite_updates" not in run.read_json(run.stages)[0] and run.results.is_file()
