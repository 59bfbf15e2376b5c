"""A trained model is the one that was trained, or a clear error: final/manifest.json (sha256 of every file, the
labels) checked by `thawing.load`; damaged run files (heads, tasks.json, metrics.jsonl, results.json, state.json) give
exit 2 naming the file; an encoder with its own modeling code trains, predicts, evaluates and loads with
trust_remote_code, and never without it.

Run: `.venv/bin/python -m pytest -q tests/test_integrity.py`
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml
from clirun import invoke
from toy import toy_config, write_config

import thawing
from thawing.config import parse_config
from thawing.errors import InputError, ThawingError
from thawing.training.loop import train


@pytest.fixture(scope="module")
def trained(tiny_bert_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    config = toy_config(tiny_bert_dir, root, tasks=("sentiment", "ner"))
    config["train"]["epochs"] = 1
    config["train"]["keep_checkpoints"] = True  # the resume case damages one
    return train(parse_config(config), run_dir=str(root / "run")).path


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run, free to damage."""
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def _texts(tmp_path: Path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("john is in paris\nthe movie was great\n")
    return path


# ------------------------------------------------------------------------------------------ the manifest


def test_final_records_the_sha256_of_every_file_and_the_labels(trained):
    manifest = json.loads((trained / "final" / "manifest.json").read_text())
    files = sorted(p.relative_to(trained / "final").as_posix() for p in (trained / "final").rglob("*")
                   if p.is_file() and p.relative_to(trained / "final").as_posix() not in ("manifest.json", "README.md"))
    assert (trained / "final" / "README.md").is_file()  # the model card: documentation, free to edit, not covered
    assert sorted(manifest["files"]) == files and "heads.safetensors" in files and "encoder/model.safetensors" in files
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((trained / "final" / name).read_bytes()).hexdigest() == digest
    assert manifest["labels"] == json.loads((trained / "final" / "labels.json").read_text())
    assert manifest["labels"]["sentiment"] == ["negative", "positive"] and manifest["algorithm"] == "sha256"


def _swap_labels(path: Path, key=None) -> None:
    data = json.loads(path.read_text())
    entry = data["sentiment"] if key is None else data["sentiment"][key]
    entry.reverse()
    path.write_text(json.dumps(data, indent=2) + "\n")


def _flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


CHANGES = {
    "labels swapped in tasks.json": (lambda f: _swap_labels(f / "tasks.json", "labels"),
                                     ["task 'sentiment' has labels ['positive', 'negative'] now, ['negative', "
                                      "'positive'] when trained", "tasks.json changed (sha256 differs)"]),
    "labels swapped in labels.json": (lambda f: _swap_labels(f / "labels.json"), ["labels.json changed"]),
    "label dropped": (lambda f: (lambda d: (d["sentiment"]["labels"].pop(), (f / "tasks.json").write_text(
        json.dumps(d))))(json.loads((f / "tasks.json").read_text())), ["task 'sentiment' has labels ['negative'] now"]),
    "heads modified": (lambda f: _flip_byte(f / "heads.safetensors", -3), ["heads.safetensors changed"]),
    "heads missing": (lambda f: (f / "heads.safetensors").unlink(), ["heads.safetensors is missing"]),
    "encoder truncated": (lambda f: (f / "encoder" / "model.safetensors").write_bytes(
        (f / "encoder" / "model.safetensors").read_bytes()[:1000]), ["encoder/model.safetensors changed"]),
    "file added": (lambda f: (f / "encoder" / "added_tokens.json").write_text("{}"), ["added_tokens.json was added"]),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_model_changed_since_training_is_refused(run, tmp_path, change):
    damage, expected = CHANGES[change]
    damage(run / "final")
    with pytest.raises(InputError) as caught:
        thawing.load(run)
    message = str(caught.value)
    assert message.startswith(f"{run / 'final'}: this model is not the one that was trained"), message
    for fragment in expected:
        assert fragment in message, (fragment, message)
    code, output = invoke("predict", str(run), "-i", str(_texts(tmp_path)), "-o", str(tmp_path / "p.jsonl"))
    assert code == 2 and output == message and not (tmp_path / "p.jsonl").exists()
    code, output = invoke("evaluate", str(run), "--split", "dev")
    assert code == 2 and output == message


def test_hidden_files_are_not_compared(run):
    (run / "final" / ".DS_Store").write_bytes(b"\0")
    assert thawing.load(run).tasks["sentiment"].labels == ["negative", "positive"]


def test_a_model_without_its_manifest_is_refused_unless_told_not_to_verify(run, tmp_path, caplog):
    """A deleted manifest must not turn the checks off: reordered labels would then predict wrong labels silently."""
    (run / "final" / "manifest.json").unlink()
    with pytest.raises(InputError, match="no manifest.json") as caught:
        thawing.load(run)
    assert "--no-verify" in str(caught.value) and str(run / "final") in str(caught.value)
    for args in (["evaluate", str(run), "--split", "dev"],
                 ["predict", str(run), "-i", str(_texts(tmp_path)), "-o", str(tmp_path / "p.jsonl")]):
        code, message = invoke(*args)
        assert code == 2 and "no manifest.json" in message and "Traceback" not in message, (args[0], message)
    assert not (tmp_path / "p.jsonl").exists()
    with caplog.at_level(logging.WARNING, logger="thawing.api"):
        model = thawing.load(run, verify=False)
    assert "without checking" in caplog.text and str(run / "final") in caplog.text
    assert model.predict(["the movie was great"], task="sentiment")[0]["label"] in ("negative", "positive")
    code, message = invoke("predict", str(run), "-i", str(_texts(tmp_path)), "-o", str(tmp_path / "p.jsonl"),
                           "--no-verify")
    assert code == 0 and len((tmp_path / "p.jsonl").read_text().splitlines()) == 2, message


# ------------------------------------------------------------------------------------------ damaged files, no manifest


def _edit_tasks(final: Path, edit) -> None:
    data = json.loads((final / "tasks.json").read_text())
    edit(data)
    (final / "tasks.json").write_text(json.dumps(data))


DAMAGE = {
    "heads missing": (lambda f: (f / "heads.safetensors").unlink(), "heads.safetensors: missing"),
    "heads truncated": (lambda f: (f / "heads.safetensors").write_bytes((f / "heads.safetensors").read_bytes()[:50]),
                        "heads.safetensors: cannot read the heads"),
    "label dropped": (lambda f: _edit_tasks(f, lambda d: d["sentiment"]["labels"].pop()),
                      "but tasks.json makes the head of 'sentiment' (1,"),
    "label invalid": (lambda f: _edit_tasks(f, lambda d: d["sentiment"]["labels"].__setitem__(1, None)),
                      "tasks.json: task 'sentiment': labels must be distinct non-empty strings"),
    "label repeated": (lambda f: _edit_tasks(f, lambda d: d["sentiment"]["labels"].__setitem__(1, "negative")),
                       "labels must be distinct non-empty strings, got ['negative', 'negative']"),
    "tasks.json truncated": (lambda f: (f / "tasks.json").write_text((f / "tasks.json").read_text()[:120]),
                             "tasks.json, line"),
    "unknown task type": (lambda f: _edit_tasks(f, lambda d: d["ner"].__setitem__("type", "regression")),
                          "task 'ner': unknown type 'regression'"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_files_of_a_run_without_manifest_exit_2_naming_the_file(run, tmp_path, damage):
    (run / "final" / "manifest.json").unlink()  # loaded unchecked (--no-verify): the files' own checks speak
    edit, expected = DAMAGE[damage]
    edit(run / "final")
    for args in (["evaluate", str(run), "--split", "dev", "--no-verify"],
                 ["predict", str(run), "-i", str(_texts(tmp_path)), "-o", str(tmp_path / "p.jsonl"), "--no-verify"]):
        code, message = invoke(*args)
        assert code == 2 and expected in message and "Traceback" not in message, (args[0], message)
        assert str(run / "final") in message


@pytest.mark.parametrize("damage, expected", [
    ("metrics line cut", "metrics.jsonl, line {n}: not valid JSON"),
    ("metrics line not a record", "metrics.jsonl, line {n}: not a metrics record"),
    ("results truncated", "results.json, line 1: not valid JSON"),
    ("results empty", "results.json, line 1: not valid JSON"),
    ("tasks.json not an object", "final/tasks.json: not an object of task specs"),
    ("results of another shape", "results.json: not the results of a run"),
])
def test_report_of_damaged_files_exits_2_naming_file_and_line(run, damage, expected):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    n = len(lines) - 2
    if damage == "metrics line cut":
        lines[n - 1] = lines[n - 1][: len(lines[n - 1]) // 2]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    elif damage == "metrics line not a record":
        lines[n - 1] = json.dumps({"task": "sentiment", "step": "three", "metrics": {}})
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    elif damage == "results truncated":
        (run / "results.json").write_text((run / "results.json").read_text()[:30].replace("\n", " "))
    elif damage == "results empty":
        (run / "results.json").write_text("")
    elif damage == "results of another shape":
        (run / "results.json").write_text('{"tasks": [], "score": 1}')
    else:
        (run / "final" / "tasks.json").write_text("[1, 2]")
    code, message = invoke("report", str(run))
    assert code == 2 and message.startswith(str(run / expected.format(n=n))), message


def test_resume_with_a_truncated_state_exits_2(run):
    (run / "results.json").unlink()  # a run that stopped after its first stage
    state = run / "checkpoints" / "last" / "state.json"
    state.write_text(state.read_text()[:40])
    code, message = invoke("train", "--resume", str(run))
    assert code == 2 and message.startswith(f"{state}, line"), message


# ------------------------------------------------------------------------------------------ trust_remote_code

CUSTOM_CODE = '''"""A BERT with its own model type, loaded only with trust_remote_code (auto_map in config.json)."""
from transformers import BertConfig, BertModel


class TinyCustomConfig(BertConfig):
    model_type = "tiny-custom-bert"


class TinyCustomModel(BertModel):
    config_class = TinyCustomConfig
'''


@pytest.fixture(scope="module")
def custom_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT whose config.json names its own modeling code (auto_map -> custom_bert.py beside it)."""
    from conftest import _vocab
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("custom") / "custom-bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(_vocab()) + "\n")
    BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True).save_pretrained(folder)
    config = BertConfig(vocab_size=len(_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    (folder / "custom_bert.py").write_text(CUSTOM_CODE)
    raw = json.loads((folder / "config.json").read_text())
    raw.update(model_type="tiny-custom-bert", architectures=["TinyCustomModel"],
               auto_map={"AutoConfig": "custom_bert.TinyCustomConfig", "AutoModel": "custom_bert.TinyCustomModel"})
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    return folder


def test_remote_code_trains_predicts_evaluates_and_loads_only_when_trusted(custom_model_dir, tmp_path):
    config = toy_config(custom_model_dir, tmp_path, tasks=("sentiment",))
    config["train"]["epochs"] = 1
    path = write_config(config, tmp_path / "c.yaml")
    code, message = invoke("train", str(path), "--run-dir", str(tmp_path / "refused"))
    assert code == 2 and "ships its own modeling code" in message and "model.trust_remote_code" in message
    assert not (tmp_path / "refused").exists()

    run = tmp_path / "run"
    code, output = invoke("train", str(path), "--run-dir", str(run), "--set", "model.trust_remote_code=true")
    assert code == 0, output
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["trust_remote_code"] is True
    assert (run / "final" / "encoder" / "custom_bert.py").is_file()  # the run carries the code it needs

    texts, out = _texts(tmp_path), tmp_path / "p.jsonl"
    code, message = invoke("predict", str(run), "-i", str(texts), "-o", str(out))
    assert code == 2 and "--trust-remote-code" in message and not out.exists()
    code, output = invoke("predict", str(run), "-i", str(texts), "-o", str(out), "--trust-remote-code")
    assert code == 0, output
    assert len(out.read_text().splitlines()) == 2
    code, message = invoke("evaluate", str(run), "--split", "dev")
    assert code == 2 and "--trust-remote-code" in message
    code, output = invoke("evaluate", str(run), "--split", "dev", "--trust-remote-code")
    assert code == 0 and "sentiment" in output, output
    code, output = invoke("report", str(run))  # reads files only: no model code runs, no flag needed
    assert code == 0, output

    with pytest.raises(ThawingError, match="trust_remote_code=True to thawing.load"):
        thawing.load(run)
    model = thawing.load(run, trust_remote_code=True)
    assert type(model.model.encoder.backbone).__name__ == "TinyCustomModel"
    assert model.predict(["the movie was great"], task="sentiment")[0]["label"] in ("negative", "positive")


def test_the_model_card_may_be_edited(run):
    card = run / "final" / "README.md"
    card.write_text(card.read_text() + "\nOur notes on this model.\n")
    assert thawing.load(run).predict(["john is in paris"])  # documentation, not the model: the manifest skips it


MARKING_CODE = CUSTOM_CODE + '''

import os


class MarkingModel(TinyCustomModel):
    """Leaves a file behind each time it is built: whoever builds it ran this code."""

    def __init__(self, config, *args, **kwargs):
        marker = os.environ.get("THAWING_TEST_MARKER")
        if marker:
            with open(marker, "a") as fh:
                fh.write("ran\\n")
        super().__init__(config, *args, **kwargs)
'''


def test_every_command_that_loads_a_run_runs_its_code_only_when_told(custom_model_dir, tmp_path, monkeypatch):
    """The hostile pass (#26): `thawing interpolate` ran a run's own model code with no flag, and serve and export could
    not load such a run. Each command that loads a run now takes --trust-remote-code and refuses without it."""
    import shutil

    folder = tmp_path / "marking-bert"
    shutil.copytree(custom_model_dir, folder)
    (folder / "custom_bert.py").write_text(MARKING_CODE)
    raw = json.loads((folder / "config.json").read_text())
    raw["auto_map"]["AutoModel"] = "custom_bert.MarkingModel"
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    config = toy_config(folder, tmp_path, tasks=("sentiment",), schedule="heads")
    config["model"]["trust_remote_code"] = True
    config["probes"] = {}
    run = tmp_path / "run"
    assert invoke("train", str(write_config(config, tmp_path / "c.yaml")), "--run-dir", str(run))[0] == 0
    marker = tmp_path / "marker"
    monkeypatch.setenv("THAWING_TEST_MARKER", str(marker))
    (run / "report" / "evaluation.json").unlink()  # so that the report's breakdown loads the model

    refused = {
        "interpolate": ["interpolate", str(run), "--alphas", "0,1", "--no-save"],
        "export": ["export", str(run), "--output", str(tmp_path / "onnx")],
        "serve": ["serve", str(run), "--port", "0"],
    }
    for name, argv in refused.items():
        code, message = invoke(*argv)
        assert code == 2 and "trust" in message, (name, message)
        assert not marker.exists(), f"`thawing {name}` ran the model's code without --trust-remote-code"
    code, output = invoke("report", str(run))  # the report stands; its breakdown says why there is none
    assert code == 0 and not marker.exists()
    assert "trust" in (run / "report" / "index.html").read_text()
    code, output = invoke("report", str(run), "--trust-remote-code")
    assert code == 0 and marker.exists() and (run / "report" / "evaluation.json").is_file()
    marker.unlink()
    code, output = invoke("interpolate", str(run), "--alphas", "0,1", "--no-save", "--trust-remote-code")
    assert code == 0, output
    assert marker.exists()


def test_a_model_with_weights_that_are_not_finite_is_refused_at_load(run, tmp_path):
    """The hostile pass (#26): NaN head weights (with a manifest made to match) gave NaN probabilities silently in the
    Python API and a traceback in `predict`."""
    import torch
    from safetensors.torch import load_file, save_file

    from thawing.store import manifest

    heads = run / "final" / "heads.safetensors"
    state = load_file(str(heads))
    first = sorted(state)[0]
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, str(heads))
    labels = json.loads((run / "final" / "labels.json").read_text())
    (run / "final" / "manifest.json").write_text(json.dumps(manifest.build(run / "final", labels,
                                                                           ("manifest.json", "README.md"))))
    with pytest.raises(InputError, match="not finite"):
        thawing.load(run)
    out = tmp_path / "out.jsonl"
    code, message = invoke("predict", str(run), "-i", str(_texts(tmp_path)), "-o", str(out))
    assert code == 2 and "not finite" in message and not out.exists()


@pytest.mark.parametrize("path", ["../../../elsewhere", "/tmp/elsewhere"])
def test_a_module_path_outside_the_model_folder_is_refused(run, path):
    """modules.json could otherwise load an encoder from files no manifest covers."""
    modules = run / "final" / "encoder" / "modules.json"
    entries = json.loads(modules.read_text())
    entries[0]["path"] = path
    modules.write_text(json.dumps(entries))
    for load in (lambda: thawing.load(run, verify=False), lambda: thawing.load_encoder(str(run / "final" / "encoder"))):
        with pytest.raises(ThawingError, match="leaves the model's folder") as caught:
            load()
        assert str(modules) in str(caught.value) and path in str(caught.value)
