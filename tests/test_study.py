"""The freezing study: one run per plan preset in one directory, compared against the frozen baseline.

Run: `.venv/bin/python -m pytest -q tests/test_study.py`
"""

from __future__ import annotations

import json

import pytest
from toy import toy_config, write_config
from typer.testing import CliRunner

from thawing.cli import app
from thawing.config import parse_config
from thawing.errors import InputError
from thawing.study import run_study


@pytest.fixture(scope="module")
def study(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    config = parse_config(toy_config(tiny_bert_dir, root, tasks=("sentiment", "qtype")))
    return run_study(config, ["frozen", "heads"], str(root / "study"))


def test_each_scenario_is_a_complete_run_summarised_from_its_own_files(study):
    rows = json.loads((study.path / "study.json").read_text())["scenarios"]
    assert list(rows) == ["frozen", "heads"]
    for name, row in rows.items():
        results = json.loads((study.path / name / "results.json").read_text())
        assert row["tasks"] == results["tasks"] and row["score"] == results["score"]
        assert (study.path / name / "report" / "report.md").is_file()
    assert rows["frozen"]["updates"] == 0 and rows["heads"]["updates"] > 0
    assert rows["heads"]["trainable_params"] > 0 == rows["frozen"]["trainable_params"]


def test_study_md_compares_against_the_frozen_baseline(study):
    rows = json.loads((study.path / "study.json").read_text())["scenarios"]
    text = (study.path / "study.md").read_text()
    line = next(x for x in text.splitlines() if x.startswith("| [heads]"))
    heads, frozen = rows["heads"]["tasks"]["qtype"]["accuracy"], rows["frozen"]["tasks"]["qtype"]["accuracy"]
    assert f"{heads:.4f} ({heads - frozen:+.4f})" in line
    assert (study.path / "study.png").read_bytes().startswith(b"\x89PNG")


def test_unknown_scenario_is_refused_before_anything_runs(tiny_bert_dir, tmp_path):
    config = parse_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",)))
    with pytest.raises(InputError, match="frozen, heads, full, progressive"):
        run_study(config, ["heads", "everything"], str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()


def test_study_and_report_commands(tiny_bert_dir, tmp_path):
    path = write_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",)), tmp_path / "c.yaml")
    result = CliRunner().invoke(app, ["study", str(path), "--scenarios", "frozen", "--study-dir", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "s")
    (tmp_path / "s" / "study.md").unlink()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "s")])
    assert result.exit_code == 0 and (tmp_path / "s" / "study.md").is_file()


def test_several_seeds_report_means_and_ranges(tiny_bert_dir, tmp_path):
    config = parse_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment", "qtype")))
    study = run_study(config, ["frozen", "heads"], str(tmp_path / "s"), seeds=[0, 1])
    rows = json.loads((study.path / "study.json").read_text())["scenarios"]
    for name, row in rows.items():
        per_seed = [json.loads((study.path / f"{name}-seed{seed}" / "results.json").read_text()) for seed in (0, 1)]
        values = [r["tasks"]["qtype"]["accuracy"] for r in per_seed]
        assert row["tasks"]["qtype"]["accuracy"] == pytest.approx(sum(values) / 2)
        assert row["spread"]["qtype"]["accuracy"] == [min(values), max(values)]
        assert [r["seed"] for r in row["per_seed"]] == [0, 1]
    heads = rows["heads"]["spread"]["qtype"]["accuracy"]
    assert f"[{heads[0]:.4f}-{heads[1]:.4f}]" in (study.path / "study.md").read_text()
    with pytest.raises(InputError, match="distinct"):
        run_study(config, ["heads"], str(tmp_path / "t"), seeds=[1, 1])
