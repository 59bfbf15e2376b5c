"""The run report: written at the end of `train`, made again by `thawing report` from the run directory; report.md,
curves.png, evaluation.json and index.html (one self-contained page, checked in a headless browser where one is
installed). The loop's newer records (probe and training lines) are added by hand (`loop_records.py`).

Run: `.venv/bin/python -m pytest -q tests/test_report.py`
"""

from __future__ import annotations

import base64
import json
import re
import shutil

import pytest
from loop_records import add_loop_records
from toy import NER, toy_config
from typer.testing import CliRunner

from thawing.api import train
from thawing.cli import app
from thawing.config import parse_config
from thawing.errors import InputError
from thawing.reporting import report as report_module
from thawing.reporting.report import write_report
from thawing.store.metric_lines import stage_starts

PNG = b"\x89PNG\r\n\x1a\n"
IMAGE = re.compile(r'<img src="([^"]*)"')


@pytest.fixture(scope="module")
def run(tiny_bert_dir, tmp_path_factory):
    """A two-stage run (heads, then everything) over the three toy tasks."""
    root = tmp_path_factory.mktemp("report")
    schedule = [{"name": "heads", "train": ["heads"], "epochs": 2}, {"name": "all", "train": ["all"], "epochs": 1}]
    config = parse_config(toy_config(tiny_bert_dir, root, schedule=schedule))
    return train(config, run_dir=str(root / "run"))


@pytest.fixture()
def with_records(run, tmp_path):
    """A copy of the run with probe and training lines, probe results and a frozen head, as the loop will write."""
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    frozen = {"qtype": {"metric": "accuracy", "start": 0.4, "end": 0.5, "change": 0.1}}
    add_loop_records(copy, retention={"heads": 1.0, "all": 0.9}, drift={"heads": 0.0, "all": 0.05},
                     frozen_heads=frozen)
    return copy


def images(page: str) -> list[bytes]:
    """Every image of the page, decoded from its data URI (any other source fails)."""
    out = []
    for src in IMAGE.findall(page):
        assert src.startswith("data:image/png;base64,"), src[:60]
        out.append(base64.b64decode(src.split(",", 1)[1]))
    return out


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


def test_index_html_is_one_self_contained_page(run):
    page = (run.path / "report" / "index.html").read_text()
    assert "<script" not in page and "<link" not in page and "http://" not in page and "https://" not in page
    pngs = images(page)
    assert pngs and all(p.startswith(PNG) for p in pngs)
    assert (run.path / "report" / "curves.png").read_bytes() in pngs
    # the loop's training records give the loss and rate figures; this config has no probes, and the page says so
    assert "training loss per task" in page and "No retention probes" in page
    for stage in json.loads((run.path / "stages.json").read_text()):
        assert f"<td>{stage['stage']}</td><td>{stage['trainable_params']:,}</td>" in page


def test_final_model_breakdown_agrees_with_its_results(run):
    evaluation = json.loads((run.path / "report" / "evaluation.json").read_text())
    results = json.loads((run.path / "results.json").read_text())
    labels = json.loads((run.path / "final" / "labels.json").read_text())
    for task, split in results["splits"].items():
        assert evaluation["tasks"][task][split]["metrics"] == pytest.approx(results["tasks"][task])
    for task in ("sentiment", "qtype"):
        for e in evaluation["tasks"][task].values():
            matrix = e["detail"]["matrix"]
            assert e["detail"]["labels"] == labels[task] and len(matrix) == len(labels[task])
            assert sum(map(sum, matrix)) == e["examples"]
            correct = sum(matrix[i][i] for i in range(len(matrix)))
            assert correct / e["examples"] == pytest.approx(e["metrics"]["accuracy"])
    ner = evaluation["tasks"]["ner"]["dev"]
    gold = {"PER": 0, "LOC": 0, "ORG": 0}
    for _, tags in NER:  # the toy NER dev split is NER itself
        for tag in tags:
            if tag.startswith("B-"):
                gold[tag[2:]] += 1
    assert {t: v["support"] for t, v in ner["detail"]["types"].items()} == gold
    assert set(evaluation["tasks"]["sentiment"]) == {"dev"} and set(evaluation["tasks"]["qtype"]) == {"dev", "test"}


def test_the_breakdown_made_from_trainings_logits_is_the_saved_models(run):
    """Training writes the breakdown from the logits of its final evaluation (no second pass over dev and test);
    it equals the one computed from the saved model and the run's data."""
    from thawing.api import evaluate_final
    from thawing.store.run_dir import RunDir

    written = json.loads((run.path / "report" / "evaluation.json").read_text())
    again = evaluate_final(RunDir(run.path))
    assert written["final"] == again["final"] and written["tasks"].keys() == again["tasks"].keys()
    for task, splits in again["tasks"].items():
        for split, entry in splits.items():
            assert written["tasks"][task][split]["examples"] == entry["examples"]
            assert written["tasks"][task][split]["metrics"] == pytest.approx(entry["metrics"], abs=1e-6)
            assert written["tasks"][task][split]["detail"] == entry["detail"]


def test_the_loops_records_reach_the_report(with_records, monkeypatch):
    seen = {}
    draw = report_module.figures.dev_curves

    def spy(lines, primary, starts):
        seen["starts"] = starts
        return draw(lines, primary, starts)

    monkeypatch.setattr(report_module.figures, "dev_curves", spy)
    before = len(images((with_records / "report" / "index.html").read_text()))
    write_report(with_records)
    page = (with_records / "report" / "index.html").read_text()
    text = (with_records / "report" / "report.md").read_text()
    lines = [json.loads(x) for x in (with_records / "metrics.jsonl").read_text().splitlines()]
    heads_end = max(x["step"] for x in lines if x["stage"] == "heads")
    assert seen["starts"] == [(0, "heads"), (heads_end, "all")]
    assert stage_starts(json.loads((with_records / "stages.json").read_text()), lines) == seen["starts"]
    # the run's own training records drew its loss and rate figures already: probes and weight changes are new
    assert len(images(page)) == before + 2
    assert "| stsb | spearman_retention | 1.0000 | 1.0000 | 0.9000 |" in text
    assert "| drift | drift | 0.0000 | 0.0000 | 0.0500 |" in text
    assert "| qtype | accuracy | 0.4000 | 0.5000 | +0.1000 |" in text  # the head that never trained
    assert re.search(r"<td>sentiment</td><td>\d+\.\d%</td>", page)  # each task's share of the micro-batches


def test_report_reuses_its_breakdown_and_survives_missing_data(run, tmp_path):
    from thawing.api import evaluate_final

    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    kept = (copy / "report" / "evaluation.json").read_text()
    config = copy / "config.yaml"  # the data moved away after training
    config.write_text(config.read_text().replace(str(run.path.parent / "data"), str(tmp_path / "gone")))
    write_report(copy)
    assert (copy / "report" / "evaluation.json").read_text() == kept  # the same final model: reused
    shutil.rmtree(copy / "report")
    write_report(copy, evaluate_final)  # `thawing report`'s way: computed again from the run's data, which moved
    page = (copy / "report" / "index.html").read_text()
    assert "No breakdown: not computed" in page and "gone" in page
    assert not (copy / "report" / "evaluation.json").exists() and (copy / "report" / "report.md").is_file()


def test_page_renders_in_a_headless_browser(with_records, tmp_path):
    from browser import open_page

    write_report(with_records)
    page = with_records / "report" / "index.html"
    record = open_page(page, tmp_path / "report.png")
    assert record["errors"] == [] and record["console"] == []
    shown = record["images"]
    assert len(shown) == len(images(page.read_text()))
    assert all(w > 0 and h > 0 and rw > 0 and rh > 0 and done for w, h, rw, rh, done in shown)
    assert (tmp_path / "report.png").read_bytes().startswith(PNG)


def test_report_command_writes_it_again_in_place(run):
    shutil.rmtree(run.path / "report")
    result = CliRunner().invoke(app, ["report", str(run.path)])
    assert result.exit_code == 0, result.output
    first = (run.path / "report" / "report.md").read_text()
    assert result.stdout.strip() == str(run.path / "report" / "report.md")
    assert (run.path / "report" / "index.html").is_file() and (run.path / "report" / "evaluation.json").is_file()
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
