"""Sharing a model through the Hugging Face Hub: `thawing push` (huggingface_hub's upload calls replaced by a fake that
writes each commit into a Hugging Face cache under tmp_path, in the cache's own layout), then `thawing.load(repo_id)`,
`thawing embed`/`evaluate`/`predict`/`export` and sentence-transformers reading that cache offline; clear refusals.

Run: `.venv/bin/python -m pytest -q tests/test_hub.py`
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_cli import invoke
from toy import toy_config, write_jsonl

import thawing
from thawing.config import parse_config
from thawing.errors import InputError, ModelNotFoundError, ThawingError
from thawing.training.loop import train

SRC = Path(__file__).resolve().parents[1] / "src"
REPO = "someone/toy-model"
PROMPT = "which question : "
TEXTS = ["who won the game ?", "the movie was great", "john is in paris"]


@pytest.fixture(scope="module")
def run(tiny_bert_dir, tmp_path_factory) -> Path:
    """A finished run over the three toy tasks (a prompt on qtype), heads only: seconds."""
    root = tmp_path_factory.mktemp("hub")
    raw = toy_config(tiny_bert_dir, root, schedule=[{"name": "heads", "train": ["heads"], "epochs": 1}])
    raw["tasks"]["qtype"]["prompt"] = PROMPT
    return train(parse_config(raw), run_dir=str(root / "run")).path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of this test's own, offline, with no token. huggingface_hub reads its settings into
    `constants` when imported, so those are set as well as the variables."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    return home / "hub"


class FakeHub:
    """Stands in for the Hub's write calls: records them, and `upload_folder` stores each commit in the cache as
    `snapshot_download` finds it (models--owner--name/snapshots/<commit>/, refs/<branch>), files only (git keeps no
    empty folders)."""

    def __init__(self, cache: Path, public: set[str] = frozenset()):
        self.cache, self.public, self.calls = cache, public, []

    def install(self, monkeypatch) -> FakeHub:
        # In place of the class thawing's push imports; snapshot_download keeps its own, so reads stay real (offline).
        import huggingface_hub

        monkeypatch.setattr(huggingface_hub, "HfApi", lambda **_options: self)
        return self

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def repo_info(self, repo_id, **kwargs):
        self.calls.append(("repo_info", repo_id, kwargs))
        return SimpleNamespace(private=repo_id not in self.public)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        commit = hashlib.sha1(f"{repo_id}{len(self.calls)}".encode()).hexdigest()
        storage = self.cache / f"models--{repo_id.replace('/', '--')}"
        folder = Path(folder_path)
        for source in folder.rglob("*"):
            if source.is_file():
                target = storage / "snapshots" / commit / source.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)  # follows links, as an upload reads the file
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / (kwargs.get("revision") or "main")).write_text(commit)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{commit}")

    def named(self, call: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == call]


@pytest.fixture
def hub(cache, monkeypatch) -> FakeHub:
    return FakeHub(cache).install(monkeypatch)


def _same_predictions(a, b) -> None:
    for task, rows in a.predict(TEXTS).items():
        others = b.predict(TEXTS)[task]
        for row, other in zip(rows, others, strict=True):
            assert {k: v for k, v in row.items() if k != "probs"} == {k: v for k, v in other.items() if k != "probs"}
            if "probs" in row:
                np.testing.assert_allclose(list(row["probs"].values()), list(other["probs"].values()), atol=1e-6)
    np.testing.assert_allclose(a.encode(TEXTS), b.encode(TEXTS), atol=1e-6)


# ---------------------------------------------------------------------------------------------- push, then load


def test_push_then_load_by_repo_id_predicts_as_the_run(run, hub):
    url = thawing.push(run, REPO)
    assert url.startswith(f"https://huggingface.co/{REPO}/commit/")
    (_, repo, created), = hub.named("create_repo")
    assert repo == REPO and created["exist_ok"] is True and created["private"] is None and created["token"] is True
    (_, _, uploaded), = hub.named("upload_folder")
    assert uploaded["delete_patterns"] == "*" and uploaded["revision"] is None
    assert uploaded["commit_message"] == "Upload run with thawing"
    assert not hub.named("create_branch") and not hub.named("repo_info")

    snapshot = next((hub.cache / "models--someone--toy-model" / "snapshots").iterdir())
    final = run / "final"
    # final/'s files, the encoder's at the root (a sentence-transformers model), thawing's beside it
    assert ({p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
            == {p.relative_to(final).as_posix().removeprefix("encoder/") for p in final.rglob("*") if p.is_file()})
    assert (snapshot / "modules.json").is_file() and (snapshot / "heads.safetensors").is_file()
    local_card, card = (final / "README.md").read_text(), (snapshot / "README.md").read_text()
    assert card.split("## Usage")[0] == local_card.split("## Usage")[0]  # all but the usage section as trained
    assert f'thawing.load("{REPO}")' in card and "Paths are relative" not in card
    assert f'SentenceTransformer("{REPO}")' in card and "library_name: sentence-transformers" in card
    assert f"thawing export {REPO} --format onnx --output toy-model-onnx" in card
    assert 'thawing.load("run")' in local_card  # the run's own card is left alone

    from_hub = thawing.load(REPO, device="cpu")
    assert from_hub.name == REPO and from_hub.run.stands_alone()
    _same_predictions(from_hub, thawing.load(run, device="cpu"))


def test_cli_push_options_take_effect(run, hub):
    code, output = invoke("push", str(run), REPO, "--private", "--revision", "v2", "--commit-message", "first")
    assert code == 0, output
    assert output.strip().startswith(f"https://huggingface.co/{REPO}/commit/")
    assert hub.named("create_repo")[0][2]["private"] is True
    assert hub.named("repo_info")  # --private is checked against the repo as it is
    assert hub.named("create_branch")[0][2]["branch"] == "v2"
    (_, _, uploaded), = hub.named("upload_folder")
    assert uploaded["revision"] == "v2" and uploaded["commit_message"] == "first"
    assert thawing.load(REPO, device="cpu", revision="v2").tasks.keys() == {"sentiment", "qtype", "ner"}
    with pytest.raises(ModelNotFoundError, match="v2|main|cache"):  # the branch was pushed, not main
        thawing.load(REPO)


def test_private_refused_for_an_existing_public_repo(run, cache, monkeypatch):
    hub = FakeHub(cache, public={REPO}).install(monkeypatch)
    code, output = invoke("push", str(run), REPO, "--private")
    assert code == 2 and "exists and is public" in output
    assert not hub.named("upload_folder")


@pytest.mark.usefixtures("cache")  # an empty cache and no token: the real create_repo refuses
def test_missing_token_is_huggingface_hubs_own_message(run):
    # The real create_repo: huggingface_hub refuses before any request, as no token is found.
    code, output = invoke("push", str(run), REPO)
    assert code == 2
    assert f"cannot push to '{REPO}'" in output and "LocalTokenNotFoundError" in output and "hf auth login" in output


def test_push_refuses_what_is_not_a_finished_whole_run(run, hub, tmp_path):
    assert invoke("push", str(tmp_path / "absent"), REPO)[1].endswith("not found: no such run directory")
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.yaml").write_text((run / "config.yaml").read_text())
    code, output = invoke("push", str(started), REPO)
    assert code == 2 and "no trained model to push" in output

    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "results.json").unlink()
    code, output = invoke("push", str(unfinished), REPO)
    assert code == 2 and "has not finished" in output and "--resume" in output

    partial = tmp_path / "partial"
    shutil.copytree(run, partial)
    (partial / "final" / "heads.safetensors").unlink()
    code, output = invoke("push", str(partial), REPO)
    assert code == 2 and "heads.safetensors is missing" in output

    for argv, message in ((["noslash"], "must be owner/name"), ([REPO, "--commit-message", " "], "message is empty")):
        code, output = invoke("push", str(run), *argv)
        assert code == 2 and message in output
    assert not hub.calls  # nothing reached the Hub


def test_an_edited_card_keeps_its_edits(run, hub, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    card = copy / "final" / "README.md"
    card.write_text(card.read_text() + "\n## Citation\n\nOurs.\n")  # the card is outside the manifest: may be edited
    thawing.push(copy, REPO)
    pushed = next((hub.cache / "models--someone--toy-model" / "snapshots").iterdir()) / "README.md"
    assert pushed.read_text().endswith("\n## Citation\n\nOurs.\n") and f'thawing.load("{REPO}")' in pushed.read_text()


# ---------------------------------------------------------------------------------------------- names


@pytest.mark.usefixtures("cache")  # an empty offline cache: the name is found nowhere
def test_unknown_repo_id_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="cannot find model 'nobody/nothing'.*HF_HUB_OFFLINE"):
        thawing.load("nobody/nothing")
    texts = tmp_path / "in.txt"
    texts.write_text("a text\n")
    out = str(tmp_path / "out")
    for argv in (["predict", "nobody/nothing", "-i", str(texts), "-o", out], ["evaluate", "nobody/nothing"],
                 ["export", "nobody/nothing", "-o", out],
                 ["embed", "-m", "nobody/nothing", "-i", str(texts), "-o", out]):
        code, output = invoke(*argv)
        assert code == 2 and "'nobody/nothing'" in output, (argv, output)
    with pytest.raises(InputError, match="no such folder"):
        thawing.load("not a repo id")
    with pytest.raises(InputError, match="no such folder"):
        thawing.load(Path("nobody/nothing"))  # a Path is always a folder


def test_cli_error_has_no_traceback(tmp_path):
    texts = tmp_path / "in.txt"
    texts.write_text("a text\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}  # this checkout's thawing
    done = subprocess.run([sys.executable, "-m", "thawing", "predict", "nobody/nothing", "-i", str(texts), "-o",
                           str(tmp_path / "out.jsonl")], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cannot find model 'nobody/nothing'" in done.stderr


@pytest.mark.usefixtures("hub")  # push goes to the fake hub
def test_a_local_folder_takes_precedence(run, tmp_path, monkeypatch):
    thawing.push(run, REPO)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(run, tmp_path / REPO)  # a run directory named like the repo
    model = thawing.load(REPO, device="cpu")
    assert not model.run.stands_alone() and model.run.path == Path(REPO)
    with pytest.raises(InputError, match="revision 'main' applies to a Hugging Face repo id"):
        thawing.load(REPO, revision="main")


def test_a_plain_encoder_repo_is_not_a_trained_model(tiny_bert_dir, cache):
    snapshot = cache / "models--someone--encoder" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_bert_dir, snapshot)
    (cache / "models--someone--encoder" / "refs").mkdir()
    (cache / "models--someone--encoder" / "refs" / "main").write_text("0" * 40)
    with pytest.raises(InputError, match="no trained model here \\(the Hugging Face repo 'someone/encoder'\\)"):
        thawing.load("someone/encoder")


# ---------------------------------------------------------------------------------------------- other commands


@pytest.mark.usefixtures("hub")  # push goes to the fake hub
def test_commands_take_the_repo_id(run, tmp_path):
    thawing.push(run, REPO)
    local = thawing.load(run, device="cpu")
    texts = tmp_path / "in.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    code, output = invoke("embed", "-m", REPO, "-i", str(texts), "-o", str(tmp_path / "v.npy"))
    assert code == 0, output
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), local.encode(TEXTS), atol=1e-6)

    code, output = invoke("predict", REPO, "-i", str(texts), "-o", str(tmp_path / "p.jsonl"))
    assert code == 0, output
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["sentiment"]["label"] for r in rows] == [r["label"] for r in local.predict(TEXTS, task="sentiment")]

    code, output = invoke("evaluate", REPO)  # a download has no config.yaml naming its data
    assert code == 2 and "--data task=FILE" in output
    data = write_jsonl(tmp_path / "sent.jsonl", [{"text": "i love the film", "label": "positive"},
                                                 {"text": "i hate the film", "label": "negative"}])
    for name, model in (("hub", REPO), ("run", str(run))):
        code, output = invoke("evaluate", model, "--data", f"sentiment={data}", "--output", str(tmp_path / name))
        assert code == 0, output
    from_hub, from_run = (json.loads((tmp_path / name).read_text())["tasks"] for name in ("hub", "run"))
    assert set(from_hub) == {"sentiment"} and from_hub["sentiment"] == from_run["sentiment"]


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
                    reason="onnx/onnxruntime are not installed (pip install thawing[onnx])")
def test_pushed_card_snippets_run_from_the_cache(run, hub, tmp_path, monkeypatch, capsys):
    thawing.push(run, REPO)
    card = next((hub.cache / "models--someone--toy-model" / "snapshots").iterdir()).joinpath("README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    assert len(blocks) == 3  # thawing, sentence-transformers, ONNX
    monkeypatch.chdir(tmp_path)
    command = re.search(r"^thawing export .*$", card, re.M).group(0).split()[1:]
    code, output = invoke(*command)
    assert code == 0, output
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] in ("negative", "positive")


@pytest.mark.usefixtures("hub")  # push goes to the fake hub
def test_sentence_transformers_loads_the_pushed_repo_by_its_id(run, hub):  # noqa: ARG001 (the fake Hub, installed)
    """The repo's root is a sentence-transformers model: `SentenceTransformer("owner/name")` loads it as it is (from
    the cache here) and embeds as thawing does, each task's prompt a named prompt."""
    from sentence_transformers import SentenceTransformer

    thawing.push(run, REPO)
    st = SentenceTransformer(REPO, device="cpu")
    ours = thawing.load(run, device="cpu").encode(TEXTS, prompt=PROMPT)
    np.testing.assert_allclose(st.encode(TEXTS, prompt_name="qtype"), ours, atol=1e-5)


def test_errors_name_what_failed(run, cache, monkeypatch):
    def refuse(**_kwargs):
        raise PermissionError("403 Forbidden: you cannot write to someone")

    hub = FakeHub(cache).install(monkeypatch)
    monkeypatch.setattr(hub, "upload_folder", refuse)
    with pytest.raises(ThawingError, match="cannot push to 'someone/toy-model': PermissionError: 403 Forbidden"):
        thawing.push(run, REPO)
    assert hub.named("create_repo")



def test_an_error_message_keeps_its_urls_whole():
    from thawing.model.hub import first_line

    url = "https://huggingface.co/someone/toy-model/blob/main/" + "x" * 120
    message = first_line(PermissionError("403 Forbidden: " + "you cannot write here " * 12 + url + " and more " * 40))
    assert url in message and message.endswith(" ...") and len(message) < 600
    assert first_line(ValueError("short")) == "short" and first_line(ValueError("")) == "ValueError"
