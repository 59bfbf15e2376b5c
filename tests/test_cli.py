"""The command line: embed, train, plan, evaluate, predict, and clear exit-2 errors on bad input
(report: test_report.py).

Run: `.venv/bin/python -m pytest -q tests/test_cli.py`
"""

from __future__ import annotations

import json
import subprocess
import sys

import clirun
import numpy as np
import pytest
import yaml
from conftest import SENTENCES
from toy import toy_config, write_config, write_jsonl

from thawing.model.loading import load_encoder


def invoke(*args: str) -> tuple[int, str]:
    """The CLI in-process; on success, stdout alone (these tests read a command's result)."""
    return clirun.invoke(*args, stdout=True)


# ------------------------------------------------------------------------------------------ embed


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".tsv"])
def test_embed_reads_each_format(tiny_bert_dir, tmp_path, suffix):
    path = tmp_path / f"in{suffix}"
    if suffix == ".txt":
        path.write_text("\n".join(SENTENCES) + "\n")
    elif suffix == ".jsonl":
        write_jsonl(path, [{"sentence": s} for s in SENTENCES])
    else:
        sep = "," if suffix == ".csv" else "\t"
        path.write_text(
            "id"
            + sep
            + "sentence\n"
            + "".join(f'{i}{sep}"{s}"\n' if sep == "," else f"{i}{sep}{s}\n" for i, s in enumerate(SENTENCES))
        )
    out = tmp_path / "out.npy"
    budget = ["--max-tokens", "30"] if suffix == ".tsv" else ["--batch-size", "2"]
    code, output = invoke(
        "embed",
        "--model",
        str(tiny_bert_dir),
        "--input",
        str(path),
        "--output",
        str(out),
        "--text-field",
        "sentence",
        *budget,
    )
    assert code == 0, output
    vectors = np.load(out)
    assert vectors.dtype == np.float32 and vectors.shape == (len(SENTENCES), 32)
    np.testing.assert_allclose(vectors, load_encoder(str(tiny_bert_dir)).encode(SENTENCES), atol=1e-6)


def test_embed_prompt_changes_vectors(tiny_qwen2_dir, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SENTENCES))
    for name, extra in (("plain", []), ("prompted", ["--prompt", "which question : "])):
        assert (
            invoke("embed", "-m", str(tiny_qwen2_dir), "-i", str(src), "-o", str(tmp_path / f"{name}.npy"), *extra)[0]
            == 0
        )
    expected = load_encoder(str(tiny_qwen2_dir)).encode(SENTENCES, prompt="which question : ")
    np.testing.assert_allclose(np.load(tmp_path / "prompted.npy"), expected, atol=1e-6)
    assert np.abs(np.load(tmp_path / "plain.npy") - expected).max() > 1e-3


def test_embed_packed_on_cpu_gives_the_same_vectors(tiny_qwen2_dir, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SENTENCES * 4))
    for name, extra in (("plain", []), ("packed", ["--packing", "--device", "cpu"])):
        assert (
            invoke("embed", "-m", str(tiny_qwen2_dir), "-i", str(src), "-o", str(tmp_path / f"{name}.npy"), *extra)[0]
            == 0
        )
    np.testing.assert_allclose(np.load(tmp_path / "packed.npy"), np.load(tmp_path / "plain.npy"), atol=1e-5)


def test_embed_mixed_precision(tiny_qwen2_dir, tmp_path):
    """bf16 autocast (the GPU default) gives nearly the fp32 vectors; fp16 on CPU is refused with exit 2."""
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SENTENCES))
    for name, precision in (("fp32", "no"), ("bf16", "bf16")):
        args = ("-i", str(src), "-o", str(tmp_path / f"{name}.npy"), "--device", "cpu", "--mixed-precision", precision)
        assert invoke("embed", "-m", str(tiny_qwen2_dir), *args)[0] == 0
    fp32, bf16 = np.load(tmp_path / "fp32.npy"), np.load(tmp_path / "bf16.npy")
    assert 0 < np.abs(fp32 - bf16).max() < 0.05 * np.abs(fp32).max()  # rounded differently, not wrong
    code, message = invoke(
        "embed",
        "-m",
        str(tiny_qwen2_dir),
        "-i",
        str(src),
        "-o",
        str(tmp_path / "x.npy"),
        "--device",
        "cpu",
        "--mixed-precision",
        "fp16",
    )
    assert code == 2 and "fp16 needs a CUDA GPU" in message


def test_embed_unknown_or_missing_device_exits_2(tiny_bert_dir, tmp_path):
    import torch

    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    code, message = invoke(
        "embed", "-m", str(tiny_bert_dir), "-i", str(src), "-o", str(tmp_path / "o.npy"), "--device", "tpu"
    )
    assert code == 2 and "unknown device 'tpu'" in message
    if not torch.cuda.is_available():
        code, message = invoke(
            "embed", "-m", str(tiny_bert_dir), "-i", str(src), "-o", str(tmp_path / "o.npy"), "--device", "cuda"
        )
        assert code == 2 and "no CUDA GPU" in message


@pytest.mark.parametrize(
    "content, name, expected",
    [
        (None, "missing.txt", ["missing.txt", "not found"]),
        ('{"text": "ok"}\n{"text": broken\n', "bad.jsonl", ["bad.jsonl", "line 2"]),
        ('{"text": "ok"}\n{"body": "no text"}\n', "nofield.jsonl", ["nofield.jsonl", "line 2", "text"]),
        ("\n\n", "empty.txt", ["empty.txt", "no texts"]),
    ],
)
def test_embed_bad_input_exits_2_and_writes_nothing(tiny_bert_dir, tmp_path, content, name, expected):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    out = tmp_path / "out.npy"
    code, message = invoke("embed", "-m", str(tiny_bert_dir), "-i", str(path), "-o", str(out))
    assert code == 2
    for fragment in expected:
        assert fragment in message
    assert not out.exists() and not list(tmp_path.glob(".out.npy*"))


def test_embed_unwritable_output_exits_2(tiny_bert_dir, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    code, message = invoke(
        "embed", "-m", str(tiny_bert_dir), "-i", str(src), "-o", str(tmp_path / "no" / "such" / "out.npy")
    )
    assert code == 2 and "does not exist" in message


def test_main_prints_error_and_exits_2(tmp_path):
    """The installed entry point, end to end: a clear message on stderr and exit status 2."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "thawing",
            "embed",
            "-m",
            "x",
            "-i",
            str(tmp_path / "nope.txt"),
            "-o",
            str(tmp_path / "o.npy"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "nope.txt" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------ train and friends


def test_train_evaluate_predict(tiny_bert_dir, tmp_path):
    config = write_config(toy_config(tiny_bert_dir, tmp_path), tmp_path / "toy.yaml")
    code, output = invoke("train", str(config), "--run-dir", str(tmp_path / "run"), "--set", "train.epochs=1")
    assert code == 0, output
    assert output.strip().splitlines()[-1] == str(tmp_path / "run")
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["epochs"] == 1

    code, output = invoke("evaluate", str(tmp_path / "run"), "--split", "dev", "--output", str(tmp_path / "eval.json"))
    assert code == 0, output
    evaluated = json.loads((tmp_path / "eval.json").read_text())["tasks"]
    assert set(evaluated) == {"sentiment", "qtype", "ner"}

    inputs = tmp_path / "in.txt"
    inputs.write_text("john is in paris\nthe movie was great\n")
    code, output = invoke("predict", str(tmp_path / "run"), "-i", str(inputs), "-o", str(tmp_path / "pred.jsonl"))
    assert code == 0, output
    rows = [json.loads(x) for x in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["text"] == "john is in paris"
    assert rows[1]["sentiment"]["label"] in ("positive", "negative")
    assert sum(rows[1]["sentiment"]["probs"].values()) == pytest.approx(1.0)
    assert len(rows[0]["ner"]["tags"]) == 4 and isinstance(rows[0]["ner"]["entities"], list)


def test_plan_json_for_tiny_qwen2(tiny_qwen2_dir, tmp_path):
    stages = [
        {"name": "heads", "train": ["heads"], "epochs": 1, "lr": {"heads": 1e-3}},
        {
            "name": "top",
            "train": ["heads", "projection", "layers[-2:]"],
            "lr": {"heads": 5e-4, "encoder": 1e-4},
            "layer_decay": 0.5,
        },
    ]
    config = write_config(
        toy_config(tiny_qwen2_dir, tmp_path, tasks=("sentiment", "ner"), schedule=stages), tmp_path / "c.yaml"
    )
    code, output = invoke("plan", str(config), "--json")
    assert code == 0, output
    plan = json.loads(output)
    assert [s["name"] for s in plan["stages"]] == ["heads", "top"]
    assert [g["name"] for g in plan["stages"][0]["groups"]] == ["head:sentiment", "head:ner"]
    top = {g["name"]: g for g in plan["stages"][1]["groups"]}
    assert list(top) == ["layers.1", "layers.2", "norm", "projection", "head:sentiment", "head:ner"]
    assert (top["layers.2"]["lr"], top["layers.1"]["lr"], top["norm"]["lr"], top["projection"]["lr"]) == (
        1e-4,
        5e-5,
        1e-4,
        5e-4,
    )
    assert top["head:sentiment"]["params"] == 24 * 2 + 2  # linear head over the 24-d projection, 2 labels
    assert top["head:ner"]["params"] == 32 * 5 + 5  # token head over 32-d token states, 5 tags
    assert plan["stages"][1]["trainable_params"] == sum(g["params"] for g in plan["stages"][1]["groups"])


# ------------------------------------------------------------------------------------------ bad input


def _bad_configs(tmp_path, model_dir):
    """(description, config dict, files to write, fragments the message must contain)."""
    base = toy_config(model_dir, tmp_path, tasks=("sentiment", "ner"))
    cases = []

    def case(name, mutate, expect):
        cfg = json.loads(json.dumps(base))
        mutate(cfg)
        cases.append((name, cfg, expect))

    case("unknown key", lambda c: c["train"].update(epochz=3), ["train.epochz", "did you mean 'epochs'"])
    case(
        "missing file",
        lambda c: c["tasks"]["sentiment"]["data"].update(train=str(tmp_path / "gone.jsonl")),
        ["gone.jsonl", "not found"],
    )
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine", "label": "positive"}\n{"text": oops}\n')
    case(
        "malformed jsonl",
        lambda c: c["tasks"]["sentiment"]["data"].update(train=str(bad_json)),
        ["bad.jsonl", "line 2"],
    )
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("text,label\ngood film,positive\nbad film,negative,extra\n")
    case("malformed csv", lambda c: c["tasks"]["sentiment"]["data"].update(train=str(bad_csv)), ["bad.csv", "line 3"])
    case(
        "missing field",
        lambda c: c["tasks"]["sentiment"].update(label_field="stars"),
        ["sent_train.jsonl", "line 1", "stars"],
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    case("empty split", lambda c: c["tasks"]["sentiment"]["data"].update(dev=str(empty)), ["empty.jsonl", "empty"])
    unseen = tmp_path / "unseen.jsonl"
    write_jsonl(unseen, [{"text": "good film", "label": "positive"}, {"text": "meh", "label": "neutral"}])
    case(
        "dev label not in train",
        lambda c: c["tasks"]["sentiment"]["data"].update(dev=str(unseen)),
        ["unseen.jsonl", "line 2", "neutral", "train"],
    )
    ragged = tmp_path / "ragged.jsonl"
    write_jsonl(ragged, [{"tokens": ["john", "won"], "tags": ["B-PER"]}])
    case(
        "ner lengths", lambda c: c["tasks"]["ner"]["data"].update(train=str(ragged)), ["ragged.jsonl", "line 1", "tags"]
    )
    case("unknown scheme", lambda c: c["tasks"]["ner"].update(tag_scheme="XYZ"), ["tag_scheme", "XYZ"])
    return cases


def test_bad_input_exits_2_before_training_and_leaves_earlier_runs(tiny_bert_dir, tmp_path):
    runs = tmp_path / "runs"
    earlier = runs / "earlier"
    earlier.mkdir(parents=True)
    (earlier / "results.json").write_text('{"score": 1}')
    for name, cfg, expect in _bad_configs(tmp_path, tiny_bert_dir):
        path = write_config(cfg, tmp_path / "bad.yaml")
        code, message = invoke("train", str(path), "--run-dir", str(runs / "new"))
        assert code == 2, (name, message)
        for fragment in expect:
            assert fragment in message, (name, fragment, message)
        assert not (runs / "new").exists(), name
    assert sorted(p.name for p in runs.iterdir()) == ["earlier"]
    assert (earlier / "results.json").read_text() == '{"score": 1}'


def test_existing_run_dir_is_never_overwritten(tiny_bert_dir, tmp_path):
    config = write_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",)), tmp_path / "c.yaml")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    code, message = invoke("train", str(config), "--run-dir", str(tmp_path / "taken"))
    assert code == 2 and "already exists" in message
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]


def test_all_config_errors_are_reported_at_once(tiny_bert_dir, tmp_path):
    cfg = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",))
    cfg["train"]["batch_sise"] = 3
    cfg["modle"] = {}
    cfg["tasks"]["sentiment"]["type"] = "regression"
    code, message = invoke("train", str(write_config(cfg, tmp_path / "c.yaml")))
    assert code == 2
    assert "3 problem" in message and "did you mean 'batch_size'" in message and "did you mean 'model'" in message
    assert "tasks.sentiment.type" in message


def test_python_api(tiny_bert_dir, tmp_path):
    import thawing

    config = thawing.load_config(
        write_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment", "ner")), tmp_path / "c.yaml")
    )
    run = thawing.train(config, run_dir=str(tmp_path / "run"))
    model = thawing.load(run.path)
    assert model.encode(["john is in paris"]).shape == (1, 32)
    both = model.predict(["john is in paris"])
    assert set(both) == {"sentiment", "ner"} and both["ner"][0]["tokens"] == ["john", "is", "in", "paris"]
    assert model.predict(["the film was great"], task="sentiment")[0]["label"] in ("positive", "negative")


def test_a_trained_model_evaluates_texts_and_label_names(tiny_bert_dir, tmp_path):
    """`TrainedModel.evaluate(texts, labels, task=)` takes what a user holds: label names, tags per word."""
    import thawing
    from thawing.errors import InputError

    config = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment", "ner"))
    run = thawing.train(config, run_dir=str(tmp_path / "run"), verbose=False)
    model = thawing.load(run.path, device="cpu")
    texts = ["a wonderful film", "a dull and boring film", "what a great story", "awful acting"]
    truth = ["positive", "negative", "positive", "negative"]
    predicted = [p["label"] for p in model.predict(texts, task="sentiment")]
    accuracy = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    assert model.evaluate(texts, truth, task="sentiment")["accuracy"] == pytest.approx(accuracy)
    words = [["Alice", "lives", "in", "Paris"], ["Bob", "works", "at", "Acme"]]
    tags = [["B-PER", "O", "O", "B-LOC"], ["B-PER", "O", "O", "B-ORG"]]
    assert 0.0 <= model.evaluate(words, tags, task="ner")["f1"] <= 1.0
    unknown = r"labels\[1\]: 'meh' is not a label of task 'sentiment' \(it has negative, positive\)"
    with pytest.raises(InputError, match=unknown):
        model.evaluate(texts[:2], ["positive", "meh"], task="sentiment")
    with pytest.raises(InputError, match="several tasks"):
        model.evaluate(texts, truth)


def test_plan_reads_no_weights(tiny_qwen2_dir, tmp_path):
    """`thawing plan` builds the model from its config alone: with every weight file gone it shows the same plan."""
    import shutil

    stages = [{"name": "heads", "train": ["heads"], "epochs": 1}, {"name": "top", "train": ["heads", "layers[-2:]"]}]
    bare = tmp_path / "bare-model"
    shutil.copytree(tiny_qwen2_dir, bare)
    removed = [p for p in bare.rglob("*") if p.suffix in (".safetensors", ".bin")]
    for path in removed:
        path.unlink()
    assert removed
    plans = []
    for model in (tiny_qwen2_dir, bare):
        config = toy_config(model, tmp_path / model.name, tasks=("sentiment", "ner"), schedule=stages)
        code, output = invoke("plan", str(write_config(config, tmp_path / f"{model.name}.yaml")), "--json")
        assert code == 0, output
        plans.append(json.loads(output))
    assert plans[0] == plans[1]
