"""Integration: the real all-MiniLM-L6-v2 on small slices of ../shared/datasets (skipped cleanly when absent).

Run: `.venv/bin/python -m pytest -q -m integration`
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from thawing.config import parse_config
from thawing.train.loop import train
from test_cli import invoke

pytestmark = pytest.mark.integration
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _trec(datasets_dir, n_train: int, freeze: list[str], epochs: float = 3, **extra) -> dict:
    return {
        "name": "trec",
        "model": {"name": MODEL, "max_length": 64},
        "tasks": {
            "question_type": {
                "type": "classification",
                "data": {"train": str(datasets_dir / "trec/train.jsonl"), "test": str(datasets_dir / "trec/test.jsonl")},
                "label_field": "label_coarse",
                "limit": {"train": n_train},
            }
        },
        "train": {"batch_size": 32, "epochs": epochs, "seed": 0},
        "freeze": freeze,
        **extra,
    }


def test_embed_1000_trec_questions_matches_sentence_transformers(minilm_dir, datasets_dir, tmp_path):
    source = datasets_dir / "trec/train.jsonl"
    subset = tmp_path / "trec1000.jsonl"
    subset.write_text("".join(source.read_text().splitlines(keepends=True)[:1000]))
    out = tmp_path / "trec.npy"
    code, output = invoke("embed", "--model", MODEL, "--input", str(subset), "--output", str(out))
    assert code == 0, output
    ours = np.load(out)
    texts = [json.loads(line)["text"] for line in subset.read_text().splitlines()]
    theirs = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, batch_size=32)
    assert ours.shape == (1000, 384)
    assert np.abs(ours - theirs).max() < 1e-5


def test_frozen_network_baseline_is_well_above_chance(minilm_dir, datasets_dir, tmp_path):
    run = train(parse_config(_trec(datasets_dir, 1500, ["all"])), run_dir=str(tmp_path / "run"))
    accuracy = run.read_json("results.json")["tasks"]["question_type"]["accuracy"]
    # Six classes, the largest 27% of the test set: centroids of frozen MiniLM embeddings do far better.
    assert accuracy > 0.5


def test_heads_only_learns_trec(minilm_dir, datasets_dir, tmp_path):
    run = train(parse_config(_trec(datasets_dir, 1500, ["encoder"], epochs=4)), run_dir=str(tmp_path / "run"))
    assert run.read_json("stages.json")[0]["cached"] is True
    assert run.read_json("results.json")["tasks"]["question_type"]["accuracy"] > 0.75


def test_ner_plus_classification_reports_entity_f1(minilm_dir, datasets_dir, tmp_path):
    config = _trec(datasets_dir, 500, ["encoder"], epochs=5)
    config["tasks"]["ner"] = {
        "type": "token-classification",
        "data": {"train": str(datasets_dir / "conll2003/train.jsonl"), "dev": str(datasets_dir / "conll2003/dev.jsonl")},
        "limit": {"train": 500, "dev": 200},
    }
    run = train(parse_config(config), run_dir=str(tmp_path / "run"))
    ner = run.read_json("results.json")["tasks"]["ner"]
    assert {"precision", "recall", "f1"} <= set(ner)
    assert ner["f1"] > 0.3  # a linear tag head on frozen MiniLM token states already finds entities
