"""ONNX export: one graph whose outputs, run by onnxruntime from the export folder alone, equal thawing's logits and
embeddings (tiny BERT and Qwen2; MiniLM in the integration test); int8 quantization; the card's usage snippets run;
clear exit-2 errors.

Run: `.venv/bin/python -m pytest -q tests/test_export.py`
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import invoke
from toy import toy_config, write_jsonl

import thawing
from thawing.config import parse_config
from thawing.deploy.export import export_run, output_names
from thawing.errors import ThawingError
from thawing.training.loop import train

needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="onnx/onnxruntime are not installed (pip install thawing[onnx])",
)
TOLERANCE = 1e-4
TEXTS = ["who won the game on monday ?", "the movie was great , i love it .", "paris", "where is the river ?",
         "thanks for the fast refund , the delivery from london to berlin was fast"]
WORDS = [["john", "is", "in", "paris"], ["google", "won"], ["the", "team", "won", "in", "new", "york", "on", "monday"]]
TOPICS = [("great food", ["food"]), ("the delivery was late", ["delivery"]), ("good service", ["service"]),
          ("great food and fast delivery", ["food", "delivery"]), ("bad service and bad food", ["service", "food"]),
          ("who is john ?", [])]


def _train(model_dir: Path, root: Path) -> Path:
    """Two stages (heads, then everything) over a classification task, one with a prompt, a token task and a
    multi-label task."""
    raw = toy_config(model_dir, root, schedule=[{"name": "heads", "train": ["heads"], "epochs": 2},
                                                {"name": "all", "train": ["all"], "epochs": 1}])
    raw["tasks"]["qtype"]["prompt"] = "which question : "
    topics = write_jsonl(root / "topics.jsonl", [{"text": t, "topics": y} for t, y in TOPICS * 3])
    raw["tasks"]["topics"] = {"type": "multi-label", "data": {"train": topics, "dev": topics},
                              "label_field": "topics", "threshold": "tune"}
    return train(parse_config(raw), run_dir=str(root / "run")).path


@pytest.fixture(scope="module")
def bert_run(tiny_bert_dir, tmp_path_factory) -> Path:
    return _train(tiny_bert_dir, tmp_path_factory.mktemp("export-bert"))


@pytest.fixture(scope="module")
def qwen2_run(tiny_qwen2_dir, tmp_path_factory) -> Path:
    return _train(tiny_qwen2_dir, tmp_path_factory.mktemp("export-qwen2"))


# ---------------------------------------------------------------------------------------------- a user's client


class OnnxClient:
    """What a user writes from the export folder alone (no thawing): tokenize as thawing_onnx.json says, run the
    graph, read each task's output."""

    def __init__(self, folder: Path):
        import onnxruntime
        from transformers import AutoTokenizer

        self.meta = json.loads((folder / "thawing_onnx.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.session = onnxruntime.InferenceSession(str(folder / self.meta["graph"]),
                                                    providers=["CPUExecutionProvider"])

    def run(self, encoded) -> dict[str, np.ndarray]:
        inputs = {name: np.asarray(encoded[name], dtype=np.int64) for name in self.meta["inputs"]}
        return dict(zip(self.meta["outputs"], self.session.run(self.meta["outputs"], inputs), strict=True))

    def texts(self, texts: list[str], prompt: str | None = None) -> dict[str, np.ndarray]:
        texts = [((prompt or "") + t).strip() for t in texts]
        texts = [t.lower() for t in texts] if self.meta["do_lower_case"] else texts
        return self.run(self.tokenizer(texts, padding=True, truncation=True, max_length=self.meta["max_length"],
                                       return_tensors="np"))

    def words(self, task: str, sentences: list[list[str]]) -> list[np.ndarray]:
        """Per sentence, the token task's logits at each word's first sub-token."""
        prompt = self.meta["tasks"][task]["prompt"]
        prefix = prompt.split() if prompt else []
        empty = self.meta["empty_word"]  # a word that makes no token stands in as this one (see thawing_onnx.json)
        sentences = [[w if self.tokenizer(w, add_special_tokens=False)["input_ids"] else empty for w in s]
                     for s in sentences]
        encoded = self.tokenizer([prefix + s for s in sentences], is_split_into_words=True, padding=True,
                                 truncation=True, max_length=self.meta["max_length"], return_tensors="np")
        logits = self.run(encoded)[task]
        out = []
        for row in range(len(sentences)):
            ids, starts, previous = encoded.word_ids(row), [], None
            for pos, word in enumerate(ids):
                if word is not None and word != previous and word >= len(prefix):
                    starts.append(pos)
                previous = word
            out.append(logits[row, starts])
        return out


def _export(run: Path, tmp_path: Path, *args: str) -> Path:
    out = tmp_path / "onnx"
    code, output = invoke("export", str(run), "--format", "onnx", "--output", str(out), *args)
    assert code == 0, output
    assert output.strip().splitlines()[-1] == str(out)
    return out


# ---------------------------------------------------------------------------------------------- equality


@needs_onnxruntime
@pytest.mark.parametrize("which", ["bert_run", "qwen2_run"])
def test_onnx_outputs_equal_thawing(which, request, tmp_path):
    from thawing.data.records import Example

    run = request.getfixturevalue(which)
    folder = _export(run, tmp_path)
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".onnx") == ["model.onnx"]  # one graph
    client = OnnxClient(folder)
    assert client.meta["outputs"] == ["sentiment", "qtype", "ner", "topics", "embedding"]
    model = thawing.load(run, device="cpu")
    for task, spec in model.tasks.items():
        info = client.meta["tasks"][task]
        assert (info["type"], info["labels"], info["prompt"]) == (spec.type, spec.labels, spec.prompt)
        if spec.kind.reads == "tokens":
            ours = model.logits(task, [Example(tokens=w) for w in WORDS])
            theirs = client.words(task, WORDS)
            assert [x.shape for x in theirs] == [x.shape for x in ours]  # (words seen, labels)
        else:
            ours = model.logits(task, [Example(text=t) for t in TEXTS])
            theirs = list(client.texts(TEXTS, spec.prompt)[task])
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(b, a, atol=TOLERANCE, rtol=0)
    embedding = client.texts(TEXTS)["embedding"]
    assert embedding.shape == (len(TEXTS), client.meta["embedding"]["size"])
    np.testing.assert_allclose(embedding, model.encode(TEXTS), atol=TOLERANCE, rtol=0)
    # The multi-label threshold travels with the graph, so predictions can be made the same way.
    assert client.meta["tasks"]["topics"]["threshold"] == model.tasks["topics"].threshold
    assert client.meta["tasks"]["topics"]["activation"] == "sigmoid"
    assert max(client.meta["check"]["max_abs_diff"].values()) <= TOLERANCE


@needs_onnxruntime
def test_token_task_gives_per_token_logits_with_dynamic_axes(bert_run, tmp_path):
    client = OnnxClient(_export(bert_run, tmp_path))
    for texts in (TEXTS[:1], TEXTS):  # batch and sequence sizes other than the traced ones
        out = client.texts(texts)
        width = client.tokenizer(texts, padding=True, return_tensors="np")["input_ids"].shape[1]
        assert out["ner"].shape == (len(texts), width, 5)
        assert out["sentiment"].shape == (len(texts), 2)
        assert out["embedding"].shape == (len(texts), 32)
        np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, atol=1e-5)  # as Normalize does


# ---------------------------------------------------------------------------------------------- int8


@needs_onnxruntime
def test_int8_quantization(bert_run, tmp_path):
    import onnx

    fp32 = (_export(bert_run, tmp_path) / "model.onnx").stat().st_size
    folder = _export(bert_run, tmp_path, "--quantize", "int8", "--overwrite")  # replaces the fp32 export
    client = OnnxClient(folder)
    assert client.meta["quantized"] == "int8" and client.meta["check"]["tolerance"] is None
    graph = onnx.load(str(folder / "model.onnx"))
    assert "MatMulInteger" in {node.op_type for node in graph.graph.node}  # the weights' matmuls run in int8
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.graph.initializer)
    assert (folder / "model.onnx").stat().st_size != fp32
    model = thawing.load(bert_run, device="cpu")
    embedding = client.texts(TEXTS)["embedding"]
    difference = np.abs(embedding - model.encode(TEXTS)).max()
    assert 0 < difference < 0.1  # changed by quantization, not broken
    assert client.meta["check"]["max_abs_diff"]["embedding"] > 0  # the export recorded how much


# ---------------------------------------------------------------------------------------------- the model card


@needs_onnxruntime
def test_model_card_usage_snippets_run(bert_run, monkeypatch, capsys):
    card = (bert_run / "final" / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    assert len(blocks) == 3  # thawing, sentence-transformers, ONNX
    command = re.search(r"^thawing export .*$", card, re.M).group(0).split()[1:]
    monkeypatch.chdir(bert_run.parent)  # the card's paths are relative to the folder that holds the run
    code, output = invoke(*command)
    assert code == 0, output
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] in ("negative", "positive")  # the ONNX snippet's prediction for the first task


# ---------------------------------------------------------------------------------------------- errors


def test_missing_onnxruntime_names_the_extra(bert_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    code, output = invoke("export", str(bert_run), "--output", str(tmp_path / "out"))
    assert code == 2
    assert "pip install thawing[onnx]" in output and "onnxruntime" in output
    assert not (tmp_path / "out").exists()


def test_bad_arguments_exit_2_naming_the_problem(bert_run, tmp_path):
    code, output = invoke("export", str(bert_run), "--format", "tflite", "--output", str(tmp_path / "a"))
    assert code == 2 and "unknown export format 'tflite'" in output and "onnx" in output
    code, output = invoke("export", str(bert_run), "--quantize", "int4", "--output", str(tmp_path / "b"))
    assert code == 2 and "unknown quantization 'int4'" in output
    (tmp_path / "taken").mkdir()
    code, output = invoke("export", str(bert_run), "--output", str(tmp_path / "taken"))
    assert code == 2 and str(tmp_path / "taken") in output and "--overwrite" in output
    (tmp_path / "empty").mkdir()
    code, output = invoke("export", str(tmp_path / "empty"), "--output", str(tmp_path / "c"))
    assert code == 2 and "final/tasks.json" in output
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_task_cannot_take_an_input_or_the_embedding_name():
    assert output_names(["topic", "ner"]) == ["topic", "ner", "embedding"]
    for name in ("embedding", "input_ids", "attention_mask"):
        with pytest.raises(ThawingError, match=f"task '{name}'"):
            output_names(["topic", name])


@needs_onnxruntime
def test_a_graph_that_differs_from_pytorch_is_not_written(bert_run, tmp_path, monkeypatch):
    import thawing.deploy.export as export

    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # every graph now counts as different from PyTorch
    with pytest.raises(ThawingError, match="nothing was written"):
        export_run(bert_run, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # no output, and no folder half-built beside it


# ---------------------------------------------------------------------------------------------- MiniLM


@needs_onnxruntime
@pytest.mark.integration
@pytest.mark.usefixtures("minilm_dir")  # the config names MiniLM: skips where it is not installed
def test_minilm_export_equals_thawing(datasets_dir, tmp_path):
    from thawing.data.records import Example

    trec = datasets_dir / "trec"
    conll = datasets_dir / "conll2003"
    config = parse_config({
        "name": "minilm-onnx",
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "max_length": 64},
        "tasks": {
            "question_type": {"type": "classification", "label_field": "label_coarse", "limit": {"train": 300},
                              "data": {"train": str(trec / "train.jsonl"), "test": str(trec / "test.jsonl")}},
            "ner": {"type": "token-classification", "limit": {"train": 200, "dev": 50},
                    "data": {"train": str(conll / "train.jsonl"), "dev": str(conll / "dev.jsonl")}},
        },
        "train": {"batch_size": 32, "epochs": 1, "seed": 0},
        "freeze": ["encoder"],
    })
    run = train(config, run_dir=str(tmp_path / "run")).path
    client = OnnxClient(_export(run, tmp_path))
    model = thawing.load(run, device="cpu")
    texts = [json.loads(line)["text"] for line in (trec / "test.jsonl").read_text().splitlines()[:64]]
    words = [json.loads(line)["tokens"] for line in (conll / "test.jsonl").read_text().splitlines()[:32]]
    for a, b in zip(model.logits("question_type", [Example(text=t) for t in texts]),
                    client.texts(texts)["question_type"], strict=True):
        np.testing.assert_allclose(b, a, atol=TOLERANCE, rtol=0)
    for a, b in zip(model.logits("ner", [Example(tokens=w) for w in words]), client.words("ner", words), strict=True):
        np.testing.assert_allclose(b, a, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(client.texts(texts)["embedding"], model.encode(texts), atol=1e-5, rtol=0)
