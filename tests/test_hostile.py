"""Hostile input from the second hostile pass (#26 items 7 and 8): values and files that gave a traceback, or were
accepted silently, now give one clear error naming the key or the file and line, before anything is written.

Run: `.venv/bin/python -m pytest -q tests/test_hostile.py`
"""

from __future__ import annotations

import json
import os

import pytest
from toy import toy_config, write_jsonl

from thawing.config import parse_config
from thawing.config.tasks import load_task
from thawing.errors import ConfigError, InputError


@pytest.mark.parametrize("where, value, key", [
    (("train", "seed"), 2**70, "train.seed"),
    (("train", "seed"), -1, "train.seed"),
    (("train", "sampling"), {"strategy": "temperature", "temperature": 1e-300}, "temperature"),
    (("tasks", "sentiment", "head"), {"type": "mlp", "hidden_size": 10**9}, "hidden_size"),
    (("schedule",), [{"name": "s", "train": ["heads", "layers[-1:]"], "lora": {"r": 10**8}}], "r"),
    (("probes",), {"p": {"type": "similarity", "data": "x.jsonl", "limit": 0}}, "limit"),
    (("probes",), {"p": {"type": "similarity", "data": "x.jsonl", "limit": -3}}, "limit"),
])
def test_extreme_config_values_are_refused_naming_the_key(tiny_bert_dir, tmp_path, where, value, key):
    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",))
    node = raw
    for part in where[:-1]:
        node = node.setdefault(part, {})
    node[where[-1]] = value
    with pytest.raises(ConfigError, match=key):
        parse_config(raw)


def _task(path, fmt="auto"):
    from thawing.config import TaskConfig

    return TaskConfig(type="classification", data={"train": str(path)}, format=fmt)


def test_json_lines_a_parser_cannot_hold_name_their_line(tmp_path):
    path = tmp_path / "train.jsonl"
    good = json.dumps({"text": "a fine film", "label": "pos"})
    for bad in ('{"text": "x", "label": ' + "9" * 5000 + "}", '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}"):
        path.write_text(good + "\n" + bad + "\n")
        with pytest.raises(InputError, match="line 2"):
            load_task("t", _task(path))


def test_a_device_is_no_data_file():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    with pytest.raises(InputError, match="not a regular file"):
        load_task("t", _task("/dev/zero", fmt="jsonl"))


def test_a_transfer_probe_may_limit_one_split(tmp_path):
    from thawing.config import ProbeConfig
    from thawing.training.probes import load_probe

    rows = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(12)]
    train, test = write_jsonl(tmp_path / "a.jsonl", rows), write_jsonl(tmp_path / "b.jsonl", rows)
    probe = load_probe("p", ProbeConfig(type="transfer", data={"train": train, "test": test}, limit={"train": 4}))
    assert probe.n_train == 4 and len(probe.texts) == 4 + 12  # the test split read whole


def test_a_folder_of_unreadable_files_is_an_input_error_naming_the_folder(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "part.jsonl").write_text('{"text": "a fine film", "label": "pos"}\n{"text": \n')
    with pytest.raises(InputError, match="cannot be read as one") as caught:
        load_task("t", _task(folder))
    assert str(folder) in str(caught.value)
