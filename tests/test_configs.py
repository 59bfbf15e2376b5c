"""Every shipped config loads and plans; a preset obeys the command line's epochs and learning rates.

Run: `.venv/bin/python -m pytest -q tests/test_configs.py`
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from toy import toy_config, write_config
from typer.testing import CliRunner

from thawing.cli import app
from thawing.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
@pytest.mark.usefixtures("minilm_dir")  # the configs name MiniLM: skips where it is not installed
def test_every_config_loads_and_plans(path):
    config = load_config(path)
    missing = [p for t in config.tasks.values() for p in (t.data.train, t.data.dev, t.data.test) if p and
               not Path(p).is_file()]
    if missing:
        pytest.skip(f"data not here: {missing[0]}")
    result = CliRunner().invoke(app, ["plan", str(path), "--json"])
    assert result.exit_code == 0, result.output
    stages = json.loads(result.output)["stages"]
    assert stages and all(s["trainable_params"] >= 0 for s in stages)


def test_a_preset_takes_epochs_and_rates_from_the_command_line(tiny_bert_dir, tmp_path):
    path = write_config(toy_config(tiny_bert_dir, tmp_path, schedule="progressive"), tmp_path / "c.yaml")
    plain = json.loads(CliRunner().invoke(app, ["plan", str(path), "--json"]).output)["stages"]
    # toy_config sets train.epochs=2: every stage of the preset that trains runs 2 epochs
    assert [s["epochs"] for s in plain] == [2, 2, 2]
    args = ["plan", str(path), "--json", "--set", "train.epochs=1", "--set", "train.lr.encoder=1e-4"]
    stages = json.loads(CliRunner().invoke(app, args).output)["stages"]
    assert [s["epochs"] for s in stages] == [1, 1, 1]
    top_layer = {g["name"]: g["lr"] for g in stages[1]["groups"]}["layers.1"]
    assert top_layer == pytest.approx(1e-4)
    heads = {g["name"]: g["lr"] for g in stages[1]["groups"]}["head:ner"]
    assert heads == pytest.approx(5e-4)  # not set on the command line: the preset's own rate


def _plan(config: dict, tmp_path: Path, name: str) -> list[dict]:
    path = write_config(config, tmp_path / f"{name}.yaml")
    result = CliRunner().invoke(app, ["plan", str(path), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["stages"]


@pytest.mark.parametrize("schedule", ["full", "progressive"])
def test_a_run_of_token_tasks_alone_gets_a_token_budget_and_a_mix_keeps_the_sentence_plan(
        schedule, tiny_bert_dir, tmp_path):
    def plan(tasks):
        config = toy_config(tiny_bert_dir, tmp_path, tasks=tasks, schedule=schedule)
        del config["train"]["epochs"]  # else train.epochs would set every stage's
        return {s["name"]: s for s in _plan(config, tmp_path, "-".join(tasks))}

    token, mix = plan(("ner",)), plan(("ner", "sentiment"))
    encoder_stage = "full" if schedule == "full" else "discriminative"
    assert (token[encoder_stage]["epochs"], token[encoder_stage]["patience"]) == (20, 5)
    assert (mix[encoder_stage]["epochs"], mix[encoder_stage]["patience"]) == (4 if schedule == "full" else 2, 2)
    rates = {g["name"]: g["lr"] for g in token[encoder_stage]["groups"]}
    if schedule == "full":  # a tag head at 1e-3 once the encoder trains, not the sentence presets' 3e-2
        assert rates["head:ner"] == pytest.approx(1e-3) and rates["layers.1"] == pytest.approx(1e-4)
    else:  # the other stages are the sentence plan's
        assert [token[s]["epochs"] for s in ("heads", "top")] == [mix[s]["epochs"] for s in ("heads", "top")]
