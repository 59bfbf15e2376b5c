"""The run report: written at the end of `train`, made again by `thawing report` from the run directory alone.

Run: `.venv/bin/python -m pytest -q tests/test_report.py`
"""

from __future__ import annotations

import json
import shutil

import pytest
from toy import toy_config
from typer.testing import CliRunner

from thawing.cli import app
from thawing.config import parse_config
from thawing.errors import InputError
from thawing.report import write_report
from thawing.training.loop import train

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tiny_bert_dir, tmp_path_factory):
    """A two-stage run (heads, then everything) over the three toy tasks."""
    root = tmp_path_factory.mktemp("report")
    schedule = [{"name": "heads", "train": ["heads"], "epochs": 2}, {"name": "all", "train": ["all"], "epochs": 1}]
    config = parse_config(toy_config(tiny_bert_dir, root, schedule=schedule))
    return train(config, run_dir=str(root / "run"))


def test_train_writes_a_report_from_the_run_files(run):
    text = (run.path / "report" / "report.md").read_text()
    stages = json.loads((run.path / "stages.json").read_text())
    results = json.loads((run.path / "results.json").read_text())
    assert [s["stage"] for s in stages] == ["heads", "all"]
    for s in stages:
        assert f"| {s['stage']} | {s['trainable_params']:,} |" in text
    for task, values in results["tasks"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {task} | {results['splits'][task]} |"))
        for value in values.values():
            assert f"{value:.4f}" in row
    assert "ner | f1 |" in text  # each task's dev metric is its primary one: entity F1 for NER
    assert f"**{results['score']:.4f}**" in text
    assert (run.path / "report" / "curves.png").read_bytes().startswith(PNG)


def test_report_command_writes_it_again_in_place(run):
    shutil.rmtree(run.path / "report")
    result = CliRunner().invoke(app, ["report", str(run.path)])
    assert result.exit_code == 0, result.output
    first = (run.path / "report" / "report.md").read_text()
    assert result.stdout.strip() == str(run.path / "report" / "report.md")
    write_report(run.path)  # over an existing report: replaced whole, nothing left aside
    assert (run.path / "report" / "report.md").read_text() == first
    assert sorted(p.name for p in run.path.iterdir() if p.name.startswith(".")) == []


def test_report_of_a_frozen_run(tiny_bert_dir, tmp_path):
    """Whole network frozen: no optimizer step; the report still has its stage, metrics and curves."""
    config = parse_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), freeze=["all"]))
    frozen = train(config, run_dir=str(tmp_path / "run"))
    text = (frozen.path / "report" / "report.md").read_text()
    assert "no training (frozen)" in text and "| sentiment | accuracy |" in text


def test_report_needs_a_finished_run(tmp_path):
    with pytest.raises(InputError, match="results.json"):
        write_report(tmp_path)
