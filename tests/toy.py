"""Toy multi-task data over the tiny fixtures' vocabulary: a sentiment task, a question-type task and
an NER task, 16 training examples each, written as files so the real readers are exercised."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

POSITIVE = [
    "i love the film",
    "great food and great service",
    "the delivery was fast thanks",
    "good price good service",
    "i like this company",
    "the movie was great",
    "thanks for the fast refund",
    "we love the team",
]
NEGATIVE = [
    "i hate the film",
    "terrible food and bad service",
    "the delivery was late",
    "bad price bad service",
    "the parcel is late again",
    "the movie was terrible",
    "slow refund and terrible help",
    "we hate the game",
]
QUESTIONS = [
    ("who won the game ?", "person"),
    ("who is john ?", "person"),
    ("where is paris ?", "place"),
    ("where is the river ?", "place"),
    ("when is monday ?", "time"),
    ("what year was it ?", "time"),
    ("who lost the game ?", "person"),
    ("where is berlin ?", "place"),
    ("when was the delivery ?", "time"),
    ("which city is london ?", "place"),
    ("who is my team ?", "person"),
    ("when is the new year ?", "time"),
]
NER = [
    (["john", "is", "in", "paris"], ["B-PER", "O", "O", "B-LOC"]),
    (["apple", "is", "in", "london"], ["B-ORG", "O", "O", "B-LOC"]),
    (["google", "won", "in", "berlin"], ["B-ORG", "O", "O", "B-LOC"]),
    (["new", "york", "is", "a", "city"], ["B-LOC", "I-LOC", "O", "O", "O"]),
    (["john", "is", "at", "google"], ["B-PER", "O", "O", "B-ORG"]),
    (["the", "team", "won", "in", "new", "york"], ["O", "O", "O", "O", "B-LOC", "I-LOC"]),
]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def toy_data(root: Path) -> dict[str, dict[str, str]]:
    """Write train/dev files for three tasks under `root`; returns task -> split -> path."""
    root.mkdir(parents=True, exist_ok=True)
    sentiment = [{"text": t, "label": "positive"} for t in POSITIVE] + [
        {"text": t, "label": "negative"} for t in NEGATIVE
    ]
    questions = [{"text": t, "label": y} for t, y in QUESTIONS]
    ner = [{"tokens": t, "tags": y} for t, y in NER]
    return {
        "sentiment": {
            "train": write_jsonl(root / "sent_train.jsonl", sentiment),
            "dev": write_jsonl(root / "sent_dev.jsonl", sentiment[::3]),
        },
        "qtype": {
            "train": write_jsonl(root / "q_train.jsonl", questions),
            "test": write_jsonl(root / "q_test.jsonl", questions[::2]),
        },
        "ner": {
            "train": write_jsonl(root / "ner_train.jsonl", ner * 2),
            "dev": write_jsonl(root / "ner_dev.jsonl", ner),
        },
    }


def toy_config(model_dir: Path, root: Path, tasks=("sentiment", "qtype", "ner"), **extra) -> dict:
    data = toy_data(root / "data")
    types = {"sentiment": "classification", "qtype": "classification", "ner": "token-classification"}
    config = {
        "name": "toy",
        "model": {"name": str(model_dir)},
        "tasks": {t: {"type": types[t], "data": data[t]} for t in tasks},
        # The toy dev splits hold a few examples: thawing would treat every toy run as small data (no plateau stops,
        # at least 50 updates a stage; training/small_data.py). The toy runs test the plain mechanics; small-data
        # runs have tests of their own (test_small_data.py). Likewise the heads start at random: from centroids, a
        # stage's best could be its start on a toy dev split, undoing what the mechanics tests look for
        # (centroid starts: test_small_data.py).
        "train": {"batch_size": 4, "epochs": 2, "seed": 0, "eval_batch_size": 8, "small_data": {"min_dev": 0},
                  "head_init": "random"},
    }
    for key, value in extra.items():
        config[key] = value
    config["train"].setdefault("small_data", {"min_dev": 0})  # also where a test gives its own train settings
    config["train"].setdefault("head_init", "random")
    return config


def write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def pair_rows() -> dict[str, list[dict]]:
    """Toy rows of the three sentence-pair types, from the sentences above: a similarity score (5 the same sentence,
    4 the same sentiment, 1 the opposite one, 0 a question), a pair label (same, opposite, unrelated), and retrieval
    of each sentence (the positive) from its first three words (the query), its opposite as a hard negative."""
    similarity, pairs = [], []
    for i, (pos, neg) in enumerate(zip(POSITIVE, NEGATIVE, strict=True)):
        other, question = POSITIVE[(i + 1) % len(POSITIVE)], QUESTIONS[i][0]
        similarity += [{"sentence1": pos, "sentence2": pos, "score": 5}, {"sentence1": pos, "sentence2": other,
                        "score": 4}, {"sentence1": pos, "sentence2": neg, "score": 1},
                       {"sentence1": neg, "sentence2": question, "score": 0}]
        pairs += [{"sentence1": pos, "sentence2": other, "label": "same"},
                  {"sentence1": pos, "sentence2": neg, "label": "opposite"},
                  {"sentence1": neg, "sentence2": question, "label": "unrelated"}]
    retrieval = [{"query": " ".join(s.split()[:3]), "positive": s, "negative": o}
                 for s, o in zip(POSITIVE + NEGATIVE, NEGATIVE + POSITIVE, strict=True)]
    return {"similarity": similarity, "pair-classification": pairs, "retrieval": retrieval}


def pair_config(model_dir: Path, root: Path, kind: str, **extra) -> dict:
    """A one-task config of a pair type over `pair_rows`, train and dev written as files (dev: every second row)."""
    rows = pair_rows()[kind]
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    splits = {"train": write_jsonl(data / f"{kind}_train.jsonl", rows),
              "dev": write_jsonl(data / f"{kind}_dev.jsonl", rows[1::2])}
    config = {
        "name": "pairs",
        "model": {"name": str(model_dir)},
        "tasks": {"pair": {"type": kind, "data": splits}},
        "train": {"batch_size": 8, "epochs": 2, "seed": 0, "eval_batch_size": 8, "small_data": {"min_dev": 0},
                  "head_init": "random", "lr": {"encoder": 1e-3}},
        "schedule": "full",
    }
    config.update(extra)
    return config
