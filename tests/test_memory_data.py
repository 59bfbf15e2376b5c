"""Rows in memory (Python API): `thawing.train` takes a task's splits as lists of dicts or `datasets` objects; the run
directory keeps a JSONL copy that config.yaml names, so `--resume` and `evaluate` read the same rows; errors name the
task, split and row.

Run: `.venv/bin/python -m pytest -q tests/test_memory_data.py`
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from toy import toy_config
from typer.testing import CliRunner

import thawing
from thawing.cli import app
from thawing.config import ConfigError, parse_config
from thawing.errors import ThawingError
from thawing.store.run_dir import RunDir
from thawing.training.events import Evaluated

# Two trained stages, so a run can die in the second and resume from the first's checkpoint.
SCHEDULE = [{"name": "heads", "train": ["heads"], "epochs": 2}, {"name": "all", "train": ["all"], "epochs": 1}]


def rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def in_memory(config: dict) -> dict:
    """The toy config with sentiment's splits as lists of dicts and qtype's train as a `datasets.Dataset` whose
    labels are ClassLabel ids (the same rows as the files)."""
    datasets = pytest.importorskip("datasets")
    tasks = config["tasks"]
    sentiment, qtype = tasks["sentiment"]["data"], tasks["qtype"]["data"]
    train = rows(qtype["train"])
    names = sorted({r["label"] for r in train})
    dataset = datasets.Dataset.from_dict(
        {"text": [r["text"] for r in train], "label": [names.index(r["label"]) for r in train]},
        features=datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}))
    tasks["sentiment"]["data"] = {split: rows(path) for split, path in sentiment.items()}
    tasks["qtype"]["data"] = {"train": dataset, "test": qtype["test"]}  # a file beside rows in memory
    return config


def results(run) -> dict:
    return json.loads((run.path / "results.json").read_text())


def test_rows_in_memory_train_as_their_files_do_and_resume_from_the_run_copy(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = toy_config(tiny_bert_dir, tmp_path / "f", tasks=("sentiment", "qtype"), schedule=SCHEDULE)
    reference = thawing.train(files, run_dir=str(tmp_path / "files"))

    def killed(event) -> None:
        if isinstance(event, Evaluated) and event.stage == "all":
            raise KeyboardInterrupt("killed")

    config = in_memory(toy_config(tiny_bert_dir, tmp_path / "m", tasks=("sentiment", "qtype"), schedule=SCHEDULE))
    with pytest.raises(KeyboardInterrupt):
        thawing.train(config, run_dir=str(tmp_path / "memory"), callbacks=[killed])
    run = tmp_path / "memory"
    recorded = yaml.safe_load((run / "config.yaml").read_text())["tasks"]
    assert recorded["sentiment"]["data"] == {"test": None} | {
        split: str((run / "data" / f"sentiment_{split}.jsonl").resolve()) for split in ("train", "dev")}
    assert recorded["qtype"]["data"]["train"] == str((run / "data" / "qtype_train.jsonl").resolve())
    assert recorded["qtype"]["data"]["test"] == config["tasks"]["qtype"]["data"]["test"]
    assert rows(recorded["sentiment"]["data"]["train"]) == config["tasks"]["sentiment"]["data"]["train"]
    assert rows(recorded["qtype"]["data"]["train"]) == rows(files["tasks"]["qtype"]["data"]["train"])  # label names

    resumed = CliRunner().invoke(app, ["train", "--resume", str(run)], catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert results(RunDir(run)) == results(reference)  # as if read from files all along

    evaluated = CliRunner().invoke(app, ["evaluate", str(run), "--split", "dev", "--output", str(tmp_path / "e.json")],
                                   catch_exceptions=False)
    assert evaluated.exit_code == 0, evaluated.output
    assert set(json.loads((tmp_path / "e.json").read_text())["tasks"]) == {"sentiment", "qtype"}


def test_a_dataset_dict_is_a_tasks_data():
    datasets = pytest.importorskip("datasets")
    part = datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["x", "y"], "id": [1, 2]})
    data = datasets.DatasetDict({"train": part, "validation": part.select([0]), "unsupervised": part})
    task = parse_config({"tasks": {"t": {"type": "classification", "data": data}}}).tasks["t"]
    # validation is our dev; unsupervised is not read; only the fields the task reads are kept
    assert task.data.train == [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    assert task.data.dev == [{"text": "a", "label": "x"}] and task.data.test is None


def _train_error(tmp_path, monkeypatch, data: dict, **task) -> str:
    monkeypatch.chdir(tmp_path)
    config = {"model": {"name": str(tmp_path / "no-model")},
              "tasks": {"sentiment": {"type": "classification", "data": data} | task}}
    with pytest.raises(ThawingError) as info:
        thawing.train(config)
    assert not (tmp_path / "runs").exists()  # nothing was created
    return str(info.value)


GOOD = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}] * 2


@pytest.mark.parametrize("data, task, expected", [
    ({"train": GOOD + [{"text": "fine"}]}, {},
     "tasks.sentiment.data.train (in memory), row 4, field 'label': missing field"),
    ({"train": GOOD, "dev": [{"text": "ok", "label": "pos"}, {"text": "", "label": "neg"}]}, {},
     "tasks.sentiment.data.dev (in memory), row 1, field 'text': expected a non-empty string"),
    ({"train": GOOD + [{"text": "fine", "label": True}]}, {},
     "tasks.sentiment.data.train (in memory), row 4, field 'label': label True is a boolean, but the label on row 0"),
    ({"train": GOOD, "test": [{"text": "x", "label": "maybe"}]}, {},
     "tasks.sentiment.data.test (in memory), row 0, field 'label': label 'maybe' is not in train"),
    ({"train": []}, {}, "tasks.sentiment.data.train (in memory): train split is empty"),
])
def test_bad_rows_name_the_task_split_and_row(tmp_path, monkeypatch, data, task, expected):
    message = _train_error(tmp_path, monkeypatch, data, **task)
    assert isinstance(message, str) and expected in message, message


@pytest.mark.parametrize("data, task, expected", [
    ({"train": GOOD + ["fine"]}, {},
     "tasks.sentiment.data.train: row 4 is a str: rows in memory are dicts of field names to values"),
    ({"train": GOOD + [{"text": {"a", "b"}, "label": "pos"}]}, {},
     "tasks.sentiment: data.train, row 4, field 'text': a set cannot be written to the run directory's JSONL copy"),
    ({"train": 42}, {}, "tasks.sentiment.data.train: expected a file path, a list of rows (dicts) or a "
                        "datasets.Dataset, got int"),
    ({"train": GOOD}, {"format": "csv"}, "tasks.sentiment: format: csv applies to files; data.train is in memory"),
])
def test_rows_that_cannot_be_read_or_copied_are_config_errors(data, task, expected):
    with pytest.raises(ConfigError) as info:
        thawing.train({"tasks": {"sentiment": {"type": "classification", "data": data} | task}})
    assert expected in str(info.value)


def test_numpy_values_become_json_values():
    np = pytest.importorskip("numpy")
    data = {"train": [{"text": np.str_("good"), "label": np.int64(1)}, {"text": "bad", "label": np.int64(0)}]}
    task = parse_config({"tasks": {"t": {"type": "classification", "data": data}}}).tasks["t"]
    assert task.data.train == [{"text": "good", "label": 1}, {"text": "bad", "label": 0}]
    assert type(task.data.train[0]["label"]) is int


def test_a_dict_configs_relative_paths_are_taken_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD))
    with pytest.raises(ThawingError) as info:  # the data reads, then the model is not there
        thawing.train({"model": {"name": str(tmp_path / "no-model")},
                       "tasks": {"s": {"type": "classification", "data": {"train": "train.jsonl"}}}})
    assert "train.jsonl" not in str(info.value) and "no-model" in str(info.value)
