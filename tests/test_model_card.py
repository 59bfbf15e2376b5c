"""The model card (final/README.md, written by every run) and the sentence-transformers metadata of final/encoder/
(named prompts, similarity, versions). The card's usage snippets are run in test_export.py.

Run: `.venv/bin/python -m pytest -q tests/test_model_card.py`
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from toy import toy_config

import thawing
from thawing.config import parse_config
from thawing.errors import InputError
from thawing.store.model_card import base_model_license, front_matter, render_card, write_model_card
from thawing.training.loop import train

PROMPT = "which question : "


@pytest.fixture(scope="module")
def run(tiny_bert_dir, tmp_path_factory):
    """Two stages over the three toy tasks; the question task has a prompt."""
    root = tmp_path_factory.mktemp("card")
    raw = toy_config(tiny_bert_dir, root, schedule=[{"name": "heads", "train": ["heads"], "epochs": 2},
                                                    {"name": "top", "train": ["heads", "layers[-1:]"], "epochs": 1}])
    raw["tasks"]["qtype"]["prompt"] = PROMPT
    return train(parse_config(raw), run_dir=str(root / "run"))


def _split(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    _, meta, body = card.split("---\n", 2)
    return yaml.safe_load(meta), body


def test_every_run_writes_a_card_from_its_files(run):
    meta, body = _split((run.path / "final" / "README.md").read_text())
    results = json.loads((run.path / "results.json").read_text())
    stages = json.loads((run.path / "stages.json").read_text())
    tasks = json.loads((run.path / "final" / "tasks.json").read_text())
    assert meta["library_name"] == "sentence-transformers"  # the thawing tag finds it (the library: how to load it)
    assert {"thawing", "sentence-transformers", "text-classification", "token-classification"} <= set(meta["tags"])
    assert "base_model" not in meta and "license" not in meta  # a local random model: no hub id, no known license
    assert meta["metrics"] == sorted({m for values in results["tasks"].values() for m in values})
    entries = {e["task"]["name"]: e for e in meta["model-index"][0]["results"]}
    assert set(entries) == set(results["tasks"])
    for task, values in results["tasks"].items():
        assert {m["type"]: m["value"] for m in entries[task]["metrics"]} == values
        assert entries[task]["dataset"]["split"] == results["splits"][task]
        section = body.split(f"### {task}\n", 1)[1].split("###", 1)[0]
        assert all(f"`{label}`" in section for label in tasks[task]["labels"])
        assert "Head: linear over" in section
        assert all(f"| {metric} | {value:.4f} |" in section for metric, value in values.items())
    assert entries["ner"]["task"]["type"] == "token-classification"
    assert f"Prompt: `{PROMPT}`" in body
    for stage in stages:
        row = next(line for line in body.splitlines() if line.startswith(f"| {stage['stage']} |"))
        assert f"| {stage['trainable_params']:,} |" in row and f"| {stage['wall_s']} s |" in row
    assert "`heads`, `layers[-1:]`" in body  # what each stage trained, from config.yaml
    assert "## Retention" not in body  # results.json has no probes
    assert 'thawing.load("run")' in body and 'SentenceTransformer("run/final/encoder")' in body
    assert "thawing export run --format onnx --output run-onnx" in body
    assert str(run.path.parent) not in body  # no absolute paths of this machine


def test_probes_are_rendered_when_results_have_them(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    results = json.loads((copy / "results.json").read_text())
    results["probes"] = {"stsb": {"spearman": 0.8123, "base": 0.8301, "retained": 0.9786}}
    (copy / "results.json").write_text(json.dumps(results))
    card = write_model_card(copy).read_text()
    assert "## Retention" in card
    assert "| stsb / spearman | 0.8123 |" in card and "| stsb / retained | 0.9786 |" in card


def test_a_card_needs_a_finished_run(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    (copy / "results.json").unlink()
    with pytest.raises(InputError, match="results.json"):
        write_model_card(copy)


def test_hub_base_model_dataset_and_multi_label_threshold():
    tasks = {"tags": {"type": "multi-label", "labels": ["a", "b"], "head": {"type": "mlp", "hidden_size": 64,
                                                                           "dropout": 0.1}, "threshold": 0.35}}
    config = {"model": {"name": "someone/some-encoder"},
              "tasks": {"tags": {"type": "multi-label", "format": "hf", "data": {"train": "someone/tagged-texts"}}}}
    results = {"tasks": {"tags": {"micro_f1": 0.5}}, "splits": {"tags": "dev"}, "score": 0.5}
    meta = front_matter("r", config, tasks, results)
    assert meta["base_model"] == "someone/some-encoder" and meta["datasets"] == ["someone/tagged-texts"]
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "someone/tagged-texts"
    card = render_card("r", config, tasks, [], results)
    assert "Threshold: 0.35" in card and "MLP (hidden size 64, GELU)" in card
    assert "p > task[\"threshold\"]" in card  # the ONNX snippet applies the threshold to sigmoid probabilities


def test_license_comes_from_the_base_models_own_card(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# a model\n")
    assert base_model_license(str(tmp_path)) == "mit"
    (tmp_path / "README.md").write_text("# no front matter\n")
    assert base_model_license(str(tmp_path)) is None
    assert base_model_license("nobody/not-on-this-machine") is None  # never downloads


@pytest.mark.usefixtures("minilm_dir")  # the license is read from the installed model's card
def test_minilm_card_has_base_model_and_license():
    meta = front_matter("r", {"model": {"name": "sentence-transformers/all-MiniLM-L6-v2"}, "tasks": {}}, {},
                        {"tasks": {}})
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and meta["license"] == "apache-2.0"


# ---------------------------------------------------------------------------------------------- ST metadata


def test_encoder_has_sentence_transformers_prompts(run, tiny_bert_dir):
    from sentence_transformers import SentenceTransformer

    config = json.loads((run.path / "final" / "encoder" / "config_sentence_transformers.json").read_text())
    base = json.loads((tiny_bert_dir / "config_sentence_transformers.json").read_text())["prompts"]
    assert config["prompts"] == {**base, "qtype": PROMPT}  # the base model's named prompts, then each task's
    assert config["default_prompt_name"] is None and config["similarity_fn_name"] == "cosine"
    assert set(config["__version__"]) == {"sentence_transformers", "transformers", "pytorch"}
    st = SentenceTransformer(str(run.path / "final" / "encoder"), device="cpu")
    # sentence-transformers 6 adds empty 'query' and 'document' prompts of its own
    assert {name: prompt for name, prompt in st.prompts.items() if prompt} == {"qtype": PROMPT}
    texts = ["who won the game ?", "where is paris ?"]
    prompted = st.encode(texts, prompt_name="qtype")
    np.testing.assert_allclose(prompted, st.encode([PROMPT + t for t in texts]), atol=1e-6)
    assert np.abs(prompted - st.encode(texts)).max() > 1e-3  # the prompt is really there
    ours = thawing.load(run.path, device="cpu").encode(texts, prompt=PROMPT)
    np.testing.assert_allclose(prompted, ours, atol=1e-5)


def test_a_label_with_a_line_break_or_a_backtick_stays_one_code_span():
    """The hostile pass (#26): a label holding a newline broke the card's code span and its list."""
    from thawing.store.model_card import code

    assert code("pos") == "`pos`"
    shown = code("two\nlines")  # a real line break in the label
    assert "\n" not in shown and shown == "`two" + "\\" + "nlines`"  # written as the escape \n
    assert code("a`b") == "``a`b``" and code("`x`") == "`` `x` ``"
