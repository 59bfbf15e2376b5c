"""Tests for the multi-label task type: reading and checking data, the label set, the loss, metrics, the tuned
threshold, the centroid head, predictions, the config's refusals, and a whole run with a classification task."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toy import toy_data, write_jsonl

from thawing.config import HeadConfig, TaskConfig, parse_config
from thawing.config.tasks import load_task, load_tasks
from thawing.errors import ConfigError, InputError
from thawing.model.multitask import TaskSpec
from thawing.task_types import task_type
from thawing.task_types.heads import Head
from thawing.task_types.multilabel import THRESHOLDS

KIND = task_type("multi-label")

# Texts over the tiny fixtures' vocabulary: one topic, two topics, or none.
ONE = [("great food", ["food"]), ("the food was terrible", ["food"]), ("i love the food", ["food"]),
       ("the delivery was late", ["delivery"]), ("fast delivery", ["delivery"]), ("the parcel is late", ["delivery"]),
       ("good service", ["service"]), ("terrible service", ["service"]), ("thanks for the help", ["service"])]
TWO = [("great food and fast delivery", ["food", "delivery"]), ("bad service and bad food", ["service", "food"]),
       ("the delivery was late and the service was terrible", ["delivery", "service"]),
       ("good food , good service", ["food", "service"]), ("slow delivery and terrible help", ["delivery", "service"])]
NONE = [("who is john ?", []), ("where is paris ?", [])]


def rows(pairs) -> list[dict]:
    return [{"text": text, "topics": topics} for text, topics in pairs]


def multi_label(train: Path, dev: Path | None = None, **kw) -> TaskConfig:
    data = {"train": str(train)} | ({"dev": str(dev)} if dev else {})
    return TaskConfig.model_validate({"type": "multi-label", "data": data, "label_field": "topics"} | kw)


def spec(labels=("a", "b", "c"), threshold: float | None = 0.5) -> TaskSpec:
    return TaskSpec(type="multi-label", labels=list(labels), head={}, threshold=threshold)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def error(fn, *args, **kw) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kw)
    return str(info.value)


# ---------------------------------------------------------------------------------------------- data


def test_jsonl_lists_become_multi_hot_rows(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", rows(ONE + TWO + NONE))
    dev = write_jsonl(tmp_path / "dev.jsonl", rows([("great food and good service", ["service", "food"]),
                                                    ("who won ?", [])]))
    data = load_task("topics", multi_label(train, dev))
    assert data.type == "multi-label"
    assert data.labels == ["delivery", "food", "service"]  # the sorted union of the train labels
    assert data.splits["dev"][0].text == "great food and good service"
    assert data.splits["dev"][0].label == [0.0, 1.0, 1.0]
    assert data.splits["dev"][1].label == [0.0, 0.0, 0.0]  # an empty list: no label applies
    assert data.splits["train"][len(ONE)].label == [1.0, 1.0, 0.0]


def test_number_labels_sort_as_numbers(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "topics": [10, 2]}, {"text": "b", "topics": ["1"]}])
    data = load_task("t", multi_label(train, train))
    assert data.labels == ["1", "2", "10"]
    assert [e.label for e in data.splits["train"]] == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]


@pytest.mark.parametrize("suffix, sep", [("csv", ","), ("tsv", "\t")])
def test_csv_cells_split_on_the_separator(tmp_path, suffix, sep):
    path = tmp_path / f"train.{suffix}"
    path.write_text(f"text{sep}topics\ngreat food{sep}food; service\nwho is john ?{sep}\nfast delivery{sep}delivery\n")
    data = load_task("t", multi_label(path, path, label_separator=";"))
    assert data.labels == ["delivery", "food", "service"]
    assert [e.label for e in data.splits["train"]] == [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]


def test_csv_default_separator_is_a_pipe(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,topics\ngreat food,food|service\nfast delivery,delivery\n")
    assert [e.label for e in load_task("t", multi_label(path, path)).splits["train"]] == [[0.0, 1.0, 1.0],
                                                                                         [1.0, 0.0, 0.0]]


@pytest.mark.parametrize("value, message", [
    (None, "expected a list of labels (strings or numbers), got None"),
    ({"a": 1}, "expected a list of labels (strings or numbers), got {'a': 1}"),
    ("food|service", "expected a list of labels (strings or numbers), got 'food|service' (only CSV/TSV cells"),
    (3, "expected a list of labels (strings or numbers), got 3"),
    ([["food"]], "expected each label to be a string or number, got ['food']"),
    (["food", None], "expected each label to be a string or number, got None"),
    ([{"x": 1}], "expected each label to be a string or number, got {'x': 1}"),
    ([True], "expected each label to be a string or number, got True"),
    ([""], "expected each label to be a string or number, got ''"),
    (["food", "service", "food"], "label(s) food repeated in one row"),
    ([1, "1"], "label(s) 1 repeated in one row"),
])
def test_bad_labels_name_file_line_and_field(tmp_path, value, message):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "good food", "topics": ["food"]},
                                                   {"text": "good service", "topics": value}])
    assert error(load_task, "t", multi_label(train)).startswith(f"{train}, line 2, field 'topics': {message}")


def test_missing_field_empty_text_and_unknown_label(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "good food", "topics": ["food"]}, {"text": "x"}])
    assert error(load_task, "t", multi_label(train)).startswith(f"{train}, line 2, field 'topics': missing")
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": " ", "topics": ["food"]}])
    assert error(load_task, "t", multi_label(train)).startswith(f"{train}, line 1, field 'text': expected")
    train = write_jsonl(tmp_path / "train.jsonl", rows(ONE))
    dev = write_jsonl(tmp_path / "dev.jsonl", rows([("good food", ["food"]), ("good service", ["service", "news"])]))
    message = error(load_task, "t", multi_label(train, dev))
    assert message.startswith(f"{dev}, line 2, field 'topics': label 'news' is not in train (known: delivery, food")


def test_bad_csv_cell_names_its_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,topics\ngreat food,food\nbad food,food||service\n")
    assert error(load_task, "t", multi_label(path)).startswith(
        f"{path}, line 3, field 'topics': expected each label to be a string or number, got ''")


def test_train_without_any_label_is_refused(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", rows(NONE))
    assert error(load_task, "t", multi_label(train)).endswith("there are no labels to learn")


def test_configured_labels_fix_the_label_set(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", rows(ONE))
    data = load_task("t", multi_label(train, train, labels=["service", "food", "delivery", "news"]))
    assert data.labels == ["service", "food", "delivery", "news"]
    assert data.splits["train"][0].label == [0.0, 1.0, 0.0, 0.0]


def test_multi_hot_rows_batch_as_a_float_matrix(tiny_bert_dir, tmp_path):
    from thawing.data.batching import collate
    from thawing.model.loading import load_encoder

    train = write_jsonl(tmp_path / "train.jsonl", rows(ONE + TWO))
    examples = load_task("t", multi_label(train, train)).splits["train"]
    encoder = load_encoder(str(tiny_bert_dir))
    feats = KIND.featurize(encoder, examples, True, None)
    assert feats.labelled() == len(examples)  # a multi-hot row is one labelled example
    labels = collate(encoder, feats, [0, len(ONE)])["labels"]
    assert labels.dtype == torch.float32 and labels.tolist() == [[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]


# ---------------------------------------------------------------------------------------------- loss


def test_loss_is_binary_cross_entropy_averaged_per_example():
    torch.manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    by_hand = -(labels * F.logsigmoid(logits) + (1 - labels) * F.logsigmoid(-logits)).mean(dim=1)  # per example
    torch.testing.assert_close(KIND.loss(logits, labels), by_hand.mean())
    torch.testing.assert_close(KIND.loss(logits, labels), F.binary_cross_entropy_with_logits(logits, labels))
    torch.testing.assert_close(KIND.loss(logits, labels, divisor=8.0), by_hand.sum() / 8.0)
    reference = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=1).sum() / 8.0
    torch.testing.assert_close(KIND.loss(logits, labels, divisor=8.0), reference)
    KIND.loss(logits, labels, divisor=8.0).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_loss_runs_in_float32():
    logits = torch.tensor([[2.0, -1.0]], dtype=torch.bfloat16)
    assert KIND.loss(logits, torch.tensor([[1.0, 0.0]])).dtype == torch.float32


# ---------------------------------------------------------------------------------------------- metrics


PROBS = [[0.8, 0.2, 0.4, 0.05], [0.1, 0.7, 0.3, 0.05], [0.9, 0.45, 0.6, 0.05], [0.2, 0.1, 0.3, 0.05]]
GOLD = [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]


def as_logits(probs) -> list[np.ndarray]:
    return [np.array([logit(p) for p in row], dtype=np.float32) for row in probs]


def test_metrics_by_hand():
    # At 0.5: predicted {a}, {b}, {a, c}, {}. TP 3 (a, b, a), FP 1 (c in row 3), FN 2 (c in row 1, b in row 3).
    # Per label F1: a 1, b 2/3, c 0, d (never gold nor predicted) 0. Exact rows: 2 and 4.
    got = KIND.metrics(spec("abcd"), as_logits(PROBS), GOLD)
    assert got == pytest.approx({"micro_f1": 6 / 9, "macro_f1": (1 + 2 / 3) / 4, "subset_accuracy": 0.5})
    assert KIND.metrics(spec("abcd", None), as_logits(PROBS), GOLD) == got  # an untuned threshold counts as 0.5
    # At 0.35: row 1 also gets c and row 3 also b (TP 5), row 3's c stays a FP, no FN. Per label F1: a 1, b 1,
    # c 2/3, d 0. Exact rows: 1, 2 and 4.
    tuned = KIND.metrics(spec("abcd", 0.35), as_logits(PROBS), GOLD)
    assert tuned == pytest.approx({"micro_f1": 10 / 11, "macro_f1": (2 + 2 / 3) / 4, "subset_accuracy": 0.75})
    assert all(type(v) is float for v in tuned.values())


def test_metrics_refuse_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="empty"):
        KIND.metrics(spec(), [], [])
    with pytest.raises(ValueError, match="2 gold rows but 1"):
        KIND.metrics(spec(), as_logits([[0.5, 0.5, 0.5]]), [[1, 0, 0], [0, 1, 0]])


def test_decide_tunes_a_missing_threshold_for_micro_f1():
    # Positives sit at 0.32, negatives at 0.12: every grid value in (0.12, 0.32) is perfect; the tie goes to the
    # one closest to 0.5, so 0.30. At 0.5 nothing would be predicted (micro-F1 0).
    gold = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    probs = [[0.32 if y else 0.12 for y in row] for row in gold]
    task = spec("ab", None)
    KIND.decide(task, lambda: as_logits(probs), gold)
    assert task.threshold == 0.30 and task.threshold in THRESHOLDS
    assert KIND.metrics(task, as_logits(probs), gold)["micro_f1"] == 1.0
    # Above 0.5 the closest perfect value is the lowest one: positives at 0.72, negatives at 0.62 -> 0.65.
    task = spec("ab", None)
    KIND.decide(task, lambda: as_logits([[0.72 if y else 0.62 for y in row] for row in gold]), gold)
    assert task.threshold == 0.65


def test_decide_picks_the_best_imperfect_threshold():
    # Positives at 0.42, 0.62, 0.82, negatives at 0.22, 0.52, 0.72. Micro-F1 by hand: up to 0.20 all six are
    # predicted (TP 3, FP 3: 6/9); 0.25 to 0.40: TP 3, FP 2 (6/8); 0.45, 0.50: TP 2, FP 2, FN 1 (4/7); 0.55, 0.60:
    # TP 2, FP 1, FN 1 (4/6); higher is worse. The best, 6/8, ties from 0.25 to 0.40: 0.40 is closest to 0.5.
    probs, gold = [[0.42], [0.62], [0.82], [0.22], [0.52], [0.72]], [[1.0]] * 3 + [[0.0]] * 3
    task = spec("a", None)
    KIND.decide(task, lambda: as_logits(probs), gold)
    assert task.threshold == 0.40
    assert KIND.metrics(task, as_logits(probs), gold)["micro_f1"] == pytest.approx(6 / 8)


def test_decide_leaves_a_set_threshold_alone():
    def no_logits():
        raise AssertionError("a set threshold needs no dev logits")

    task = spec("ab", 0.7)
    KIND.decide(task, no_logits, [[1.0, 0.0]])
    assert task.threshold == 0.7


def test_predict_lists_labels_above_the_threshold():
    probs = [0.88, 0.12, 0.4]
    out = KIND.predict(spec("abc", 0.3), as_logits([probs])[0], None)
    assert out["labels"] == ["a", "c"]
    assert list(out["probs"]) == ["a", "b", "c"]
    assert out["probs"] == pytest.approx(dict(zip("abc", probs, strict=True)))
    assert all(type(p) is float for p in out["probs"].values())
    assert KIND.predict(spec("abc", None), as_logits([probs])[0], None)["labels"] == ["a"]  # None: 0.5
    assert KIND.predict(spec("abc"), np.full(3, -50.0, dtype=np.float32), None)["labels"] == []


# ---------------------------------------------------------------------------------------------- centroid head


def toy_points() -> tuple[torch.Tensor, torch.Tensor]:
    """Four clusters in 2-D: label 0 is "x is high", label 1 "y is high"; label 2 is never on, label 3 always."""
    g = torch.Generator().manual_seed(0)
    corners = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).repeat(5, 1)
    features = corners + 0.1 * torch.randn(corners.shape, generator=g)
    labels = torch.cat([corners, torch.zeros(len(corners), 1), torch.ones(len(corners), 1)], dim=1)
    return features, labels


@pytest.mark.parametrize("head_type", ["linear", "mlp"])
def test_centroid_head_classifies_separable_data(head_type):
    features, labels = toy_points()
    # An unlabelled row far away: if it counted, it would drag the centroids.
    with_unlabelled = torch.cat([features, torch.tensor([[50.0, -50.0]])])
    labels_unlabelled = torch.cat([labels, torch.full((1, 4), -100.0)])
    head = Head(2, 4, HeadConfig(type=head_type, hidden_size=8))
    KIND.centroid_head(head, with_unlabelled, labels_unlabelled)
    assert len(head.net) == 2  # dropout + linear, also for an MLP head
    head.eval()
    with torch.no_grad():
        assert torch.equal((head(features) > 0).float(), labels)
    positive, negative = features[labels[:, 0] == 1].mean(0), features[labels[:, 0] == 0].mean(0)
    last = head.net[-1]
    torch.testing.assert_close(last.weight[0], positive - negative)
    torch.testing.assert_close(last.bias[0], -(positive @ positive - negative @ negative) / 2)
    assert last.weight[2:].abs().sum() == 0 and last.bias[2:].tolist() == [-1e4, 1e4]


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("kind, options, message", [
    ("classification", {"threshold": 0.3}, "'threshold' applies only to multi-label tasks"),
    ("classification", {"threshold": "tune"}, "'threshold' applies only to multi-label tasks"),
    ("token-classification", {"label_separator": ";"}, "'label_separator' applies only to multi-label tasks"),
    ("multi-label", {"threshold": 1.0}, "threshold must lie strictly between 0 and 1"),
    ("multi-label", {"threshold": 0}, "threshold must lie strictly between 0 and 1"),
    ("multi-label", {"threshold": -0.2}, "threshold must lie strictly between 0 and 1"),
    ("multi-label", {"threshold": "auto"}, "threshold"),
    ("multi-label", {"label_separator": ""}, "label_separator"),
])
def test_config_refusals(kind, options, message):
    raw = {"tasks": {"t": {"type": kind, "data": {"train": "x.jsonl"}} | options}}
    with pytest.raises(ConfigError, match="tasks.t") as info:
        parse_config(raw)
    assert message in str(info.value)


def test_config_accepts_multi_label_options():
    raw = {"type": "multi-label", "data": {"train": "x.jsonl"}, "threshold": "tune", "label_separator": ";"}
    assert TaskConfig.model_validate(raw).threshold == "tune"
    assert TaskConfig.model_validate(raw | {"threshold": 0.25}).threshold == 0.25
    # Defaults are what a resolved config writes back for every task: they must load again anywhere.
    classification = TaskConfig.model_validate({"type": "classification", "data": {"train": "x.jsonl"},
                                                "threshold": None, "label_separator": "|"})
    assert classification.threshold is None


def test_specs_hold_the_configured_threshold(tiny_bert_dir, tmp_path):
    from thawing.training.setup import build_model

    train = write_jsonl(tmp_path / "train.jsonl", rows(ONE + TWO))
    sentiment = toy_data(tmp_path)["sentiment"]
    task = {"type": "multi-label", "data": {"train": train, "dev": train}, "label_field": "topics"}
    config = parse_config({"model": {"name": str(tiny_bert_dir)}, "tasks": {
        "tuned": task | {"threshold": "tune"}, "fixed": task | {"threshold": 0.3}, "default": task,
        "sentiment": {"type": "classification", "data": sentiment}}})
    specs = build_model(config, load_tasks(config.tasks)).specs
    assert {t: s.threshold for t, s in specs.items()} == {"tuned": None, "fixed": 0.3, "default": 0.5,
                                                          "sentiment": None}


# ---------------------------------------------------------------------------------------------- a whole run


@pytest.mark.parametrize("schedule", [None, "frozen"])  # trained heads; centroid heads (no gradient step)
def test_train_evaluate_predict_and_reload(tiny_bert_dir, tmp_path, schedule, monkeypatch):
    import thawing
    from thawing.model.inference import split_examples
    from thawing.task_types.multilabel import MultiLabel
    from thawing.training.loop import train

    centroid_labels = []  # what the frozen plan's centroid head gets: the train set's multi-hot rows
    centroid_head = MultiLabel.centroid_head
    monkeypatch.setattr(MultiLabel, "centroid_head",
                        lambda self, head, x, y: centroid_labels.append(y) or centroid_head(self, head, x, y))
    data = tmp_path / "data"
    data.mkdir()
    topics = {split: write_jsonl(data / f"topics_{split}.jsonl", rows(pairs)) for split, pairs in
              (("train", (ONE + TWO + NONE) * 2), ("dev", ONE[::2] + TWO[:3] + NONE), ("test", ONE[1::2] + TWO[2:]))}
    config = parse_config({
        "name": "multi",
        "model": {"name": str(tiny_bert_dir)},
        "tasks": {
            "topics": {"type": "multi-label", "data": topics, "label_field": "topics", "threshold": "tune"},
            "sentiment": {"type": "classification", "data": toy_data(tmp_path)["sentiment"]},
        },
        "train": {"batch_size": 4, "epochs": 2, "seed": 0, "eval_batch_size": 8, "small_data": {"min_dev": 0}},
        "schedule": schedule,
    })
    run = train(config, run_dir=str(tmp_path / "run"))
    if schedule == "frozen":
        assert len(centroid_labels) == 1 and centroid_labels[0].shape == (len(ONE + TWO + NONE) * 2, 3)
        assert centroid_labels[0].dtype == torch.float32
    else:
        assert centroid_labels == []

    results = json.loads((run.path / "results.json").read_text())
    assert results["splits"] == {"topics": "test", "sentiment": "dev"}
    assert set(results["tasks"]["topics"]) == {"micro_f1", "macro_f1", "subset_accuracy"}
    assert all(0.0 <= v <= 1.0 for v in results["tasks"]["topics"].values())
    assert results["score"] == pytest.approx((results["tasks"]["topics"]["micro_f1"]
                                              + results["tasks"]["sentiment"]["accuracy"]) / 2)
    saved = json.loads((run.path / "final" / "tasks.json").read_text())
    assert saved["topics"]["labels"] == ["delivery", "food", "service"]
    assert saved["topics"]["threshold"] in THRESHOLDS  # tuned on dev, then saved
    assert saved["sentiment"]["threshold"] is None

    model = thawing.load(run.path, device="cpu")
    assert model.tasks["topics"].threshold == saved["topics"]["threshold"]
    texts = ["great food and fast delivery", "who is john ?", "terrible service"]
    predictions = model.predict(texts)
    assert set(predictions) == {"topics", "sentiment"}
    for out in predictions["topics"]:
        assert list(out["probs"]) == ["delivery", "food", "service"]
        assert out["labels"] == [label for label, p in out["probs"].items() if p > saved["topics"]["threshold"]]
    assert [p["label"] in ("negative", "positive") for p in predictions["sentiment"]] == [True] * 3
    assert model.predict(texts, task="topics") == predictions["topics"]

    test = split_examples(config, "topics", saved["topics"]["labels"], "test")
    assert model.evaluate_examples("topics", test) == pytest.approx(results["tasks"]["topics"])
