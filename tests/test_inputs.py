"""Bad input to `thawing train` and `thawing evaluate`: each case exits with code 2 and one message that names the file,
line or key, and leaves no run directory behind (issue #12, the input side).

Run: `.venv/bin/python -m pytest -q tests/test_inputs.py`
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from clirun import invoke
from toy import toy_config, write_config, write_jsonl


@pytest.fixture
def read_only_dir(tmp_path) -> Path:
    """A folder nobody can create anything in: chmod 555, or for root (whom permission bits do not stop) /sys."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    try:
        Path(tempfile.mkdtemp(dir="/sys")).rmdir()
    except OSError:
        yield Path("/sys")
        return
    pytest.skip("no read-only folder on this machine")


# ------------------------------------------------------------------------------------------ train: one case each


def _set(path: str, value):
    """A mutation of the config dict: set a dotted key."""

    def mutate(config: dict) -> None:
        node = config
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {}) if not isinstance(node, list) else node[int(part)]
        node[last] = value

    return mutate


def _rename_task(new: str):
    def mutate(config: dict) -> None:
        config["tasks"][new] = config["tasks"].pop("sentiment")

    return mutate


def _train_file(rows: list[dict], name: str):
    """Replace the sentiment task's train file by `rows` (written beside the config), and carve dev from it."""

    def mutate(config: dict, root: Path) -> None:
        config["tasks"]["sentiment"]["data"] = {"train": write_jsonl(root / name, rows)}

    mutate.needs_root = True
    return mutate


STAGES = [{"name": "heads", "train": ["heads"], "epochs": 1}]
POSITIVE = [{"text": "i love the film", "label": "positive"}, {"text": "great food", "label": "positive"}]
NEGATIVE = [{"text": "i hate the film", "label": "negative"}, {"text": "bad food", "label": "negative"}]

CASES = [
    # (id, mutation, extra CLI args, fragments the message must hold)
    ("eval_every 0", _set("train.eval_every", 0), [], ["train.eval_every", "positive whole number", "got 0"]),
    ("eval_every -2", _set("train.eval_every", -2), [], ["train.eval_every", "got -2"]),
    ("stage eval_every 0", _set("schedule", [{**STAGES[0], "eval_every": 0}]), [], ["schedule.0.eval_every"]),
    ("task sst.2", _rename_task("sst.2"), [], ["tasks['sst.2']", "letters, digits, '_' or '-'"]),
    ("task ../../x", _rename_task("../../x"), [], ["tasks['../../x']", "letters, digits"]),
    ("task *", _rename_task("*"), [], ["tasks.*", "is not allowed"]),
    ("bad --set", None, ["--set", "train.epochs=[1"], ["--set train.epochs", "'[1'", "quote it"]),
    ("max_length", _set("model.max_length", 100), [], ["max_length 100", "64 positions", "model.max_length"]),
    ("selection metric", _set("selection_metric", "sentiment/f1"), [],
     ["selection_metric: 'sentiment/f1'", "sentiment/accuracy"]),
    ("early stopping metric",
     _set("schedule", [{**STAGES[0], "early_stopping": {"patience": 1, "metric": "loss"}}]), [],
     ["schedule.0.early_stopping.metric: 'loss'", "available"]),
    ("name with /", _set("name", "a/b"), [], ["name: 'a/b' is not allowed"]),
    ("name ..", _set("name", ".."), [], ["name: '..' is not allowed"]),
    ("absolute name", _set("name", "/tmp/x"), [], ["name: '/tmp/x' is not allowed"]),
    ("long name", _set("name", "x" * 300), [], ["name:", "(300 characters) is not allowed"]),
    ("empty layer slice", _set("schedule", [{"name": "top", "train": ["heads", "layers[10:12]"], "epochs": 1}]), [],
     ["stage 'top'", "'layers[10:12]' selects no layer", "the model has 2"]),
    ("stage trains nothing", _set("schedule", [{"name": "p", "train": ["projection"], "epochs": 1}]), [],
     ["stage 'p'", "selects no parameter"]),
    ("label NaN", _train_file([*POSITIVE, {"text": "meh", "label": float("nan")}, *NEGATIVE], "nan.jsonl"), [],
     ["nan.jsonl, line 3, field 'label'", "got nan"]),
    ("true and 'True'", _train_file([{"text": "yes", "label": True}, {"text": "no", "label": False},
                                    {"text": "ok", "label": "True"}], "bools.jsonl"), [],
     ["bools.jsonl, line 3, field 'label'", "is a string", "label on line 1 (True) is a boolean"]),
    ("single class", _train_file(POSITIVE * 3, "one.jsonl"), [],
     ["one.jsonl: train has 1 distinct label(s) (positive)"]),
]


@pytest.mark.parametrize("name, mutate, args, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_train_input_exits_2_with_one_message_and_no_run_dir(tiny_bert_dir, tmp_path, monkeypatch,
                                                                  name, mutate, args, expected):  # noqa: ARG001 (name: the case's id, a parametrize argument)
    monkeypatch.chdir(tmp_path)  # a run without --run-dir would land in ./runs
    config = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment", "ner"))
    if mutate is not None:
        mutate(config, tmp_path) if getattr(mutate, "needs_root", False) else mutate(config)
    path = write_config(config, tmp_path / "c.yaml")
    code, message = invoke("train", str(path), "--run-dir", str(tmp_path / "run"), *args)
    assert code == 2, message
    for fragment in expected:
        assert fragment in message, (fragment, message)
    assert "Traceback" not in message
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_duplicate_task_names_in_yaml_are_refused_naming_the_line(tiny_bert_dir, tmp_path):
    config = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment", "qtype"))
    text = yaml.safe_dump(config, sort_keys=False).replace("  qtype:", "  sentiment:")
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if x == "  sentiment:" and i > 5)
    code, message = invoke("train", str(path), "--run-dir", str(tmp_path / "run"))
    assert code == 2 and message.startswith(f"{path}, line {line}, column 3: key 'sentiment' is given twice"), message
    assert not (tmp_path / "run").exists()


def _model_copy(tiny_bert_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, copy)
    return copy


@pytest.mark.parametrize("damage", ["not a model", "a file", "truncated weights", "empty weights", "bad tokenizer"])
def test_a_model_that_is_not_one_exits_2_naming_it(tiny_bert_dir, tmp_path, damage):
    model = _model_copy(tiny_bert_dir, tmp_path)
    if damage == "not a model":
        model = tmp_path / "notes"
        model.mkdir()
        (model / "readme.txt").write_text("not a model")
    elif damage == "a file":
        model = tmp_path / "model.txt"
        model.write_text("not a model")
    elif damage == "bad tokenizer":
        (model / "tokenizer.json").write_text((model / "tokenizer.json").read_text()[:200])
    else:
        weights = model / "model.safetensors"
        cut = weights.stat().st_size // 2 if damage == "truncated weights" else 0
        weights.write_bytes(weights.read_bytes()[:cut])
    config = toy_config(model, tmp_path, tasks=("sentiment",))
    code, message = invoke("train", str(write_config(config, tmp_path / "c.yaml")), "--run-dir", str(tmp_path / "run"))
    assert code == 2 and str(model) in message and "Traceback" not in message, message
    expected = {"not a model": "not a model folder (no config.json)", "a file": "a file, not a directory",
                "bad tokenizer": "cannot load the tokenizer"}.get(damage, "cannot load the model (SafetensorError")
    assert expected in message, message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["a file", "read-only"])
def test_an_unusable_cache_dir_exits_2_before_loading(tiny_bert_dir, tmp_path, read_only_dir, where):
    cache = tmp_path / "cache-file" if where == "a file" else read_only_dir / "cache"
    if where == "a file":
        cache.write_text("")
    config = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), cache={"dir": str(cache)})
    code, message = invoke("train", str(write_config(config, tmp_path / "c.yaml")), "--run-dir", str(tmp_path / "run"))
    assert code == 2 and message.startswith(f"cache.dir: cannot use '{cache}'"), message
    assert ("is a file" if where == "a file" else "cannot write in") in message
    assert not (tmp_path / "run").exists()
    from thawing.config import parse_config
    from thawing.training.setup import check_places

    config["cache"]["enabled"] = False  # no cache: the folder is never used, so never checked
    check_places(parse_config(config))


@pytest.mark.parametrize("where", ["under a file", "read-only", "default runs/ under a file"])
def test_an_unusable_run_dir_exits_2_before_anything_loads(tmp_path, read_only_dir, monkeypatch, where):
    """The model named here does not exist: a check made after loading would complain about it instead."""
    monkeypatch.chdir(tmp_path)
    config = toy_config(tmp_path / "no-such-model", tmp_path, tasks=("sentiment",))
    path = write_config(config, tmp_path / "c.yaml")
    (tmp_path / "afile").write_text("")
    if where == "default runs/ under a file":
        (tmp_path / "runs").write_text("")
        code, message = invoke("train", str(path))
        assert code == 2 and "runs: cannot create the runs folder: 'runs' is a file" in message, message
        return
    run_dir = tmp_path / "afile" / "run" if where == "under a file" else read_only_dir / "thawing-run"
    code, message = invoke("train", str(path), "--run-dir", str(run_dir))
    assert code == 2 and message.startswith(f"{run_dir}: cannot create the run directory"), message
    assert (f"'{tmp_path / 'afile'}' is a file" if where == "under a file" else "cannot write in") in message
    assert not run_dir.exists()


def test_evaluate_refuses_an_unknown_split(tmp_path):
    code, message = invoke("evaluate", str(tmp_path), "--split", "bogus")
    assert code == 2 and message == "--split 'bogus' is not a split; choose train, dev, test"


def test_error_messages_are_not_wrapped(tmp_path):
    """The installed entry point prints a long path on one line, however narrow the terminal."""
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / ("and-another-one-" * 4) / "config.yaml"
    proc = subprocess.run([sys.executable, "-m", "thawing", "train", str(deep)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "40"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{deep}: config file not found" in proc.stderr.splitlines()[0], proc.stderr


def test_data_labels_of_mixed_kinds_and_single_class(tmp_path):
    """The readers alone (no model): the same checks, with their file and line."""
    from thawing.config import TaskConfig
    from thawing.config.tasks import load_task
    from thawing.errors import InputError

    def load(rows, kind="classification", field="label"):
        train = write_jsonl(tmp_path / "t.jsonl", rows)
        return load_task("t", TaskConfig.model_validate({"type": kind, "data": {"train": train}, "label_field": field}))

    with pytest.raises(InputError, match=r"t.jsonl, line 2, field 'label': label True is a boolean, but the label on "
                                         r"line 1 \(1\) is a number"):
        load([{"text": "a", "label": 1}, {"text": "b", "label": True}, {"text": "c", "label": 2}])
    same_text = [{"text": "a", "label": 1}, {"text": "b", "label": "1"}, {"text": "c", "label": 2}]
    assert load(same_text).labels == ["1", "2"]  # 1 and "1" read the same: one class, as CSV and JSON give them
    with pytest.raises(InputError, match=r"line 2, field 'labels': expected a label, got inf"):
        load([{"text": "a", "labels": ["x"]}, {"text": "b", "labels": [float("inf")]}], "multi-label", "labels")
    with pytest.raises(InputError, match=r"line 2, field 'labels': expected each label to be a string or number, got "
                                         r"True"):
        load([{"text": "a", "labels": ["x"]}, {"text": "b", "labels": ["y", True]}], "multi-label", "labels")
    with pytest.raises(InputError, match=r"t.jsonl: train has 1 distinct label\(s\) \(O\): a token-classification"):
        load([{"tokens": ["a", "b"], "tags": ["O", "O"]}] * 4, "token-classification")
    assert load([{"text": "a", "label": True}, {"text": "b", "label": False}] * 2).labels == ["False", "True"]
    assert load([{"text": "a", "labels": ["x"]}, {"text": "b", "labels": []}], "multi-label", "labels").labels == ["x"]


def test_configured_labels_need_two_classes_too(tmp_path):
    from thawing.config import TaskConfig
    from thawing.config.tasks import load_task
    from thawing.errors import InputError

    train = write_jsonl(tmp_path / "t.jsonl", [*POSITIVE, *POSITIVE])
    cfg = TaskConfig.model_validate({"type": "classification", "data": {"train": train}, "labels": ["positive"]})
    with pytest.raises(InputError, match="the task's 'labels' list has 1: a classification task needs at least 2"):
        load_task("t", cfg)
    cfg = cfg.model_copy(update={"labels": ["positive", "negative"]})  # configured, but train has one of them only
    with pytest.raises(InputError, match=r"train has 1 distinct label\(s\) \(positive\)"):
        load_task("t", cfg)


def test_yaml_edge_cases_give_config_errors(tmp_path):
    from thawing.config import load_config, read_yaml
    from thawing.errors import ConfigError

    cases = {"date.yaml": "name: 2024-13-01\n", "deep.yaml": "a: " + "[" * 5000, "bin.yaml": b"\xff\xfe\x00name",
             "dup.yaml": "a: {b: 1, b: 2}\n"}
    for name, text in cases.items():
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(ConfigError, match=str(tmp_path / name)):
            load_config(tmp_path / name)
    text = "base: &d {type: classification, limit: {train: 3}}\ntask:\n  <<: *d\n  type: multi-label\n"
    assert read_yaml(text)["task"] == {"type": "multi-label", "limit": {"train": 3}}  # a merge key is no duplicate
