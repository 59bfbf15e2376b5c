"""`--output` never destroys what a command reads or a folder it did not write (the hostile pass, #26 item 1):
`thawing export RUN --output RUN --overwrite` used to delete the run, and `--output PARENT --overwrite` the folder
holding every run. An output is refused when it equals, lies inside or holds an input; `--overwrite` replaces only
an output of the same command.

Run: `.venv/bin/python -m pytest -q tests/test_outputs.py`
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from clirun import invoke
from toy import toy_config

import thawing
from thawing.errors import InputError
from thawing.store.outputs import check_output


def _digest(folder: Path) -> str:
    """Every file of `folder` and its content, as one hash."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def run(tiny_bert_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    config = toy_config(tiny_bert_dir, root, tasks=("sentiment",), schedule="heads")
    return thawing.train(config, run_dir=str(root / "runs" / "run"), verbose=False).path


@pytest.mark.parametrize("where", ["the run", "inside the run", "the runs folder"])
def test_export_never_writes_over_or_around_its_own_run(run, where):
    pytest.importorskip("onnx")
    before = _digest(run.parent)
    output = {"the run": run, "inside the run": run / "final", "the runs folder": run.parent}[where]
    code, message = invoke("export", str(run), "--output", str(output), "--overwrite")
    assert code == 2 and ("input" in message or "replaces only an output" in message), message
    assert _digest(run.parent) == before  # nothing deleted, nothing written


def test_overwrite_replaces_only_an_output_of_the_same_command(run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    mine = tmp_path / "exported"
    assert invoke("export", str(run), "--output", str(mine))[0] == 0
    assert invoke("export", str(run), "--output", str(mine), "--overwrite")[0] == 0  # its own: replaced
    theirs = tmp_path / "photos"
    theirs.mkdir()
    (theirs / "holiday.jpg").write_bytes(b"\xff\xd8 a picture")
    code, message = invoke("export", str(run), "--output", str(theirs), "--overwrite")
    assert code == 2 and "replaces only an output of this command" in message
    assert (theirs / "holiday.jpg").read_bytes() == b"\xff\xd8 a picture"


@pytest.mark.parametrize("command", ["predict", "embed"])
def test_a_file_output_never_lands_on_the_model(run, tmp_path, command):
    texts = tmp_path / "in.txt"
    texts.write_text("a great film\n")
    heads = run / "final" / "heads.safetensors"
    before = heads.read_bytes()
    model = ["predict", str(run)] if command == "predict" else ["embed", "-m", str(run / "final" / "encoder")]
    target = heads if command == "predict" else run / "final" / "encoder" / "model.safetensors"
    code, message = invoke(*model, "-i", str(texts), "-o", str(target), "--overwrite")
    assert code == 2 and "input" in message
    assert heads.read_bytes() == before
    code, message = invoke(*model, "-i", str(texts), "-o", str(texts), "--overwrite")  # its own input file
    assert code == 2 and "input" in message and texts.read_text() == "a great film\n"


def test_the_rule_itself(tmp_path):
    source = tmp_path / "data" / "train.jsonl"
    source.parent.mkdir()
    source.write_text("{}\n")
    check_output(tmp_path / "new.jsonl", [source], overwrite=False)  # a new file: fine
    for bad in (source, tmp_path / "data", tmp_path, tmp_path / "data" / ".." / "data" / "x.jsonl"):
        with pytest.raises(InputError):  # the input, its folder, a folder above it, inside its folder by another name
            check_output(bad, [tmp_path / "data"], overwrite=True)
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text("an earlier result\n")
    with pytest.raises(InputError, match="output exists"):
        check_output(earlier, [source], overwrite=False)
    check_output(earlier, [source, "someone/model"], overwrite=True)  # a repo id is no local input
    with pytest.raises(InputError, match="is a folder"):
        check_output(tmp_path / "data", [], overwrite=True)
