"""Integration: the real all-MiniLM-L6-v2 on small slices of ../shared/datasets (skipped cleanly when absent).

Run: `.venv/bin/python -m pytest -q -m integration`
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from test_cli import invoke

from thawing.config import parse_config
from thawing.training.loop import train

pytestmark = pytest.mark.integration
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _trec(datasets_dir, n_train: int, freeze: list[str], epochs: float = 3, **extra) -> dict:
    return {
        "name": "trec",
        "model": {"name": MODEL, "max_length": 64},
        "tasks": {
            "question_type": {
                "type": "classification",
                "data": {
                    "train": str(datasets_dir / "trec/train.jsonl"),
                    "test": str(datasets_dir / "trec/test.jsonl"),
                },
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


@pytest.mark.usefixtures("minilm_dir")  # the config names MiniLM: skips where it is not installed
def test_frozen_network_baseline_is_well_above_chance(datasets_dir, tmp_path):
    run = train(parse_config(_trec(datasets_dir, 1500, ["all"])), run_dir=str(tmp_path / "run"))
    accuracy = run.read_json(run.results)["tasks"]["question_type"]["accuracy"]
    # Six classes, the largest 27% of the test set: centroids of frozen MiniLM embeddings do far better.
    assert accuracy > 0.5


@pytest.mark.usefixtures("minilm_dir")  # the config names MiniLM: skips where it is not installed
def test_heads_only_learns_trec(datasets_dir, tmp_path):
    run = train(parse_config(_trec(datasets_dir, 1500, ["encoder"], epochs=4)), run_dir=str(tmp_path / "run"))
    assert run.read_json(run.stages)[0]["cached"] is True
    assert run.read_json(run.results)["tasks"]["question_type"]["accuracy"] > 0.75


@pytest.mark.usefixtures("minilm_dir")  # the config names MiniLM: skips where it is not installed
def test_ner_plus_classification_reports_entity_f1(datasets_dir, tmp_path):
    config = _trec(datasets_dir, 500, ["encoder"], epochs=5)
    config["tasks"]["ner"] = {
        "type": "token-classification",
        "data": {
            "train": str(datasets_dir / "conll2003/train.jsonl"),
            "dev": str(datasets_dir / "conll2003/dev.jsonl"),
        },
        "limit": {"train": 500, "dev": 200},
    }
    run = train(parse_config(config), run_dir=str(tmp_path / "run"))
    ner = run.read_json(run.results)["tasks"]["ner"]
    assert {"precision", "recall", "f1"} <= set(ner)
    assert ner["f1"] > 0.3  # a linear tag head on frozen MiniLM token states already finds entities


@pytest.mark.usefixtures("minilm_dir")  # the config names MiniLM: skips where it is not installed
def test_plan_json_for_minilm(tmp_path):
    from toy import write_config

    config = write_config(
        {
            "name": "p",
            "model": {"name": MODEL},
            "schedule": "progressive",
            "tasks": {"a": {"type": "classification", "data": {"train": str(tmp_path / "a.jsonl")}}},
        },
        tmp_path / "p.yaml",
    )
    (tmp_path / "a.jsonl").write_text(
        '{"text": "yes", "label": "y"}\n{"text": "no", "label": "n"}\n{"text": "ok", "label": "y"}\n'
    )
    code, output = invoke("plan", str(config), "--json", "--full")
    assert code == 0, output
    stages = {s["name"]: s for s in json.loads(output)["stages"]}
    assert list(stages) == ["heads", "top", "discriminative", "full"]
    assert [g["name"] for g in stages["heads"]["groups"]] == ["head:a"]
    assert stages["heads"]["groups"][0]["params"] == 384 * 2 + 2
    top = {g["name"]: g for g in stages["top"]["groups"]}
    assert list(top) == ["layers.4", "layers.5", "head:a"]  # MiniLM has no projection and no final norm
    assert top["layers.4"]["params"] == top["layers.5"]["params"] == 1_774_464
    disc = {g["name"]: g["lr"] for g in stages["discriminative"]["groups"]}
    assert disc["layers.5"] == pytest.approx(1e-4) and disc["layers.0"] == pytest.approx(1e-4 * 0.8**5)
    assert (
        stages["full"]["trainable_params"] == 22_713_216 - 147_840 + 770
    )  # all but BERT's unused pooler, plus the head


def _stsb(datasets_dir, schedule: str, n_train: int = 256) -> dict:
    data = {split: str(datasets_dir / f"stsb/{split}.jsonl") for split in ("train", "dev", "test")}
    return {
        "name": "stsb",
        "model": {"name": MODEL, "max_length": 64},
        "tasks": {"sts": {"type": "similarity", "data": data, "score_range": [0, 5],
                          "limit": {"train": n_train, "dev": 200, "test": 300}}},
        "train": {"batch_size": 16, "epochs": 1, "seed": 0},
        "schedule": schedule,
    }


def test_similarity_trains_on_stsb_and_reports_spearman(minilm_dir, datasets_dir, tmp_path):
    """`similarity` on a slice of STS-B: the frozen run's test Spearman is that of MiniLM's own cosines
    (sentence-transformers), and training the encoder by CoSENT keeps it in the same range."""
    from scipy.stats import spearmanr

    frozen = train(parse_config(_stsb(datasets_dir, "frozen")), run_dir=str(tmp_path / "frozen"))
    pretrained = frozen.read_json(frozen.results)["tasks"]["sts"]["spearman"]
    rows = [json.loads(line) for line in (datasets_dir / "stsb/test.jsonl").read_text().splitlines()[:300]]
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    a, b = st.encode([r["sentence1"] for r in rows]), st.encode([r["sentence2"] for r in rows])
    cosines = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert pretrained == pytest.approx(spearmanr(cosines, [r["score"] for r in rows]).statistic, abs=2e-3)

    run = train(parse_config(_stsb(datasets_dir, "full")), run_dir=str(tmp_path / "full"))
    trained = run.read_json(run.results)["tasks"]["sts"]
    assert set(trained) == {"spearman", "pearson"} and run.read_json(run.results)["splits"] == {"sts": "test"}
    assert trained["spearman"] > 0.7 and abs(trained["spearman"] - pretrained) < 0.1


def _stsb_rows(datasets_dir, split: str, n: int) -> list[dict]:
    return [json.loads(line) for line in (datasets_dir / f"stsb/{split}.jsonl").read_text().splitlines()[:n]]


def _pair_run(tmp_path, name: str, kind: str, rows: dict[str, list[dict]], schedule: str):
    data = {}
    for split, items in rows.items():
        data[split] = str(tmp_path / f"{name}_{split}.jsonl")
        (tmp_path / f"{name}_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    config = {"name": name, "model": {"name": MODEL, "max_length": 64}, "tasks": {name: {"type": kind, "data": data}},
              "train": {"batch_size": 16, "epochs": 2, "seed": 0}, "schedule": schedule}
    run = train(parse_config(config), run_dir=str(tmp_path / f"{name}-{schedule}"))
    return run.read_json(run.results)["tasks"][name]


@pytest.mark.usefixtures("minilm_dir")  # skips where MiniLM is not installed
def test_pair_classification_learns_stsb_score_classes(datasets_dir, tmp_path):
    """`pair-classification` on STS-B's scores binned into 3 classes (a stand-in for NLI): a head over (u, v, |u-v|)
    of the frozen MiniLM embeddings, trained on 400 pairs, beats always answering the test slice's largest class
    (0.443 of it) by far (0.767 when written)."""
    def binned(split: str, n: int) -> list[dict]:
        return [{"sentence1": r["sentence1"], "sentence2": r["sentence2"],
                 "label": "different" if r["score"] < 2 else "related" if r["score"] < 4 else "equivalent"}
                for r in _stsb_rows(datasets_dir, split, n)]

    test = binned("test", 300)
    majority = max(sum(r["label"] == c for r in test) for c in ("different", "related", "equivalent")) / len(test)
    got = _pair_run(tmp_path, "nli", "pair-classification",
                    {"train": binned("train", 400), "dev": binned("dev", 150), "test": test}, "heads")
    assert set(got) >= {"accuracy", "macro_f1"}
    assert got["accuracy"] > majority + 0.2, (got, majority)


@pytest.mark.usefixtures("minilm_dir")
def test_retrieval_ranks_stsb_paraphrases(datasets_dir, tmp_path):
    """`retrieval` on STS-B's paraphrase pairs (score >= 4: sentence1 finds sentence2 among every positive of the
    split): the pretrained encoder already ranks most positives first (MRR@10 0.978 when written), and a trained run
    reports the same metrics, close to it."""
    def pairs(split: str, n: int) -> list[dict]:
        return [{"query": r["sentence1"], "positive": r["sentence2"]}
                for r in _stsb_rows(datasets_dir, split, n) if r["score"] >= 4]

    splits = {"train": pairs("train", 800), "dev": pairs("dev", 400), "test": pairs("test", 600)}
    frozen = _pair_run(tmp_path, "para", "retrieval", splits, "frozen")
    assert set(frozen) == {"mrr_at_10", "recall_at_1", "recall_at_10", "ndcg_at_10"}
    assert frozen["mrr_at_10"] > 0.9 and frozen["recall_at_1"] <= frozen["recall_at_10"]
    full = _pair_run(tmp_path, "para", "retrieval", splits, "full")
    assert abs(full["mrr_at_10"] - frozen["mrr_at_10"]) < 0.05
