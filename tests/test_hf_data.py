"""`format: hf` with a subset (`hf_subset`) and split names (`hf_split`), offline: a dataset folder in the Hub's
layout (data files and a README.md naming its configs, read by `datasets.load_dataset` as a hub dataset would be),
and folders written by `save_to_disk`; the extra's absence gives a clear error. Every key takes effect or is refused.

Run: `.venv/bin/python -m pytest -q tests/test_hf_data.py`
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from thawing.config import ConfigError, TaskConfig, parse_config
from thawing.config.tasks import load_task
from thawing.data import read_rows
from thawing.errors import InputError
from thawing.store.model_card import front_matter, render_card

datasets = pytest.importorskip("datasets")

README = """---
configs:
- config_name: coarse
  data_files:
  - split: train
    path: coarse/train.jsonl
  - split: validation
    path: coarse/validation.jsonl
- config_name: fine
  data_files:
  - split: train
    path: fine/train.jsonl
  - split: validation
    path: fine/validation.jsonl
---
# two subsets, as glue's tasks are
"""
COARSE = [{"text": f"coarse {i}", "label": "a" if i % 2 else "b"} for i in range(6)]
FINE = [{"text": f"fine {i}", "label": ["x", "y", "z"][i % 3]} for i in range(6)]


@pytest.fixture()
def hub_folder(tmp_path, monkeypatch) -> Path:
    """A dataset folder as on the Hub, with subsets `coarse` and `fine`; load_dataset's cache goes to tmp_path."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    root = tmp_path / "hub-dataset"
    for name, rows in (("coarse", COARSE), ("fine", FINE)):
        (root / name).mkdir(parents=True)
        for split, part in (("train", rows[:4]), ("validation", rows[4:])):
            (root / name / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (root / "README.md").write_text(README)
    return root


def hf_task(data: dict, **kw) -> TaskConfig:
    return TaskConfig.model_validate({"type": "classification", "format": "hf", "data": data} | kw)


def test_subset_and_split_names_of_a_dataset_folder(hub_folder):
    path = str(hub_folder)
    fine = load_task("t", hf_task({"train": path, "test": path}, hf_subset="fine", hf_split={"test": "validation"}))
    assert fine.labels == ["x", "y", "z"]  # the fine subset's, not the coarse one's
    assert [e.label for e in fine.splits["test"]] == [fine.labels.index(r["label"]) for r in FINE[4:]]
    assert len(fine.splits["train"]) + len(fine.splits["dev"]) == 4  # dev carved from train, as for files
    # Without hf_split, dev reads the dataset's validation split, as for a DatasetDict.
    coarse = load_task("t", hf_task({"train": path, "dev": path}, hf_subset="coarse"))
    assert len(coarse.splits["dev"]) == 2 and coarse.labels == ["a", "b"]
    # A slice, in the datasets library's own split syntax.
    rows = read_rows(path, "hf", "train", hf_subset="coarse", hf_split="train[:2]")
    assert rows == [(1, COARSE[0]), (2, COARSE[1])]


@pytest.mark.parametrize("kw, expected", [
    ({}, "Config name is missing"),  # several subsets and none chosen
    ({"hf_subset": "nope"}, "BuilderConfig 'nope' not found. Available: ['coarse', 'fine']"),
    ({"hf_subset": "fine", "hf_split": {"train": "test"}}, 'Unknown split "test"'),
])
def test_a_subset_or_split_that_is_not_there_is_an_error_naming_the_choices(hub_folder, kw, expected):
    with pytest.raises(InputError) as info:
        load_task("t", hf_task({"train": str(hub_folder)}, **kw))
    message = str(info.value)
    assert message.startswith(f"{hub_folder}: cannot load Hugging Face dataset") and expected in message
    assert "(hf_subset names a subset, hf_split a split)" in message


def test_split_names_of_a_saved_dataset_dict(tmp_path):
    part = {"text": ["one", "two", "three"], "label": ["p", "q", "p"]}
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(part),
                          "validation_matched": datasets.Dataset.from_dict({k: v[:1] for k, v in part.items()})}
                         ).save_to_disk(str(folder))
    data = load_task("t", hf_task({"train": str(folder), "test": str(folder)}, hf_split={"test": "validation_matched"}))
    assert len(data.splits["test"]) == 1
    with pytest.raises(InputError, match="no 'validation' split \\(tried validation\\); the dataset has train, "
                                         "validation_matched"):
        load_task("t", hf_task({"train": str(folder), "dev": str(folder)}, hf_split={"dev": "validation"}))
    with pytest.raises(InputError, match="hf_subset 'x': a folder written by save_to_disk holds no subsets"):
        load_task("t", hf_task({"train": str(folder)}, hf_subset="x"))
    datasets.Dataset.from_dict(part).save_to_disk(str(tmp_path / "single"))
    with pytest.raises(InputError, match="hf_split 'train': this folder holds a single split"):
        load_task("t", hf_task({"train": str(tmp_path / "single")}, hf_split={"train": "train"}))


@pytest.mark.parametrize("task, expected", [
    ({"hf_subset": "sst2"}, "'hf_subset' applies to Hugging Face datasets: set format: hf (this task's format is "
                            "auto)"),
    ({"format": "jsonl", "hf_split": {"dev": "validation"}}, "'hf_split' applies to Hugging Face datasets"),
    ({"format": "hf", "hf_split": {"test": "test"}}, "hf_split.test: the task has no data.test to read it from"),
    ({"format": "hf", "hf_split": {"validation": "x"}},
     "tasks.t.hf_split.validation: Input should be 'train', 'dev' or 'test'"),
    ({"format": "hf", "hf_subset": ""}, "tasks.t.hf_subset: String should have at least 1 character"),
])
def test_hf_keys_are_refused_where_they_cannot_apply(task, expected):
    with pytest.raises(ConfigError) as info:
        parse_config({"tasks": {"t": {"type": "classification", "data": {"train": "glue"}} | task}})
    assert expected in str(info.value)


def test_without_the_datasets_package_hf_inputs_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails as if not installed
    with pytest.raises(InputError, match=r'glue: Hugging Face datasets need the datasets package: pip install '
                                         r'"thawing\[hf\]"'):
        load_task("t", hf_task({"train": "glue"}, hf_subset="sst2"))


def test_the_model_card_names_the_subset_and_split():
    config = {"model": {"name": "m"}, "tasks": {"s": {"type": "classification", "format": "hf", "hf_subset": "sst2",
                                                     "hf_split": {"test": "validation"},
                                                     "data": {"train": "nyu-mll/glue", "test": "nyu-mll/glue"}}}}
    tasks = {"s": {"type": "classification", "labels": ["negative", "positive"], "head": {"type": "linear"}}}
    results = {"tasks": {"s": {"accuracy": 0.9}}, "splits": {"s": "test"}, "score": 0.9}
    dataset = front_matter("r", config, tasks, results)["model-index"][0]["results"][0]["dataset"]
    assert dataset == {"name": "nyu-mll/glue", "type": "nyu-mll/glue", "config": "sst2", "split": "validation"}
    card = render_card("r", config, tasks, [], results)
    assert "- Data: train `nyu-mll/glue`, test `nyu-mll/glue` (split `validation`), subset `sst2`" in card
