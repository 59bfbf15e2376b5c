"""Tests for thawing.task_types.metrics: hand-computed classification, entity and selection scores."""

from __future__ import annotations

import pytest

from thawing.task_types import primary_metrics
from thawing.task_types.metrics import classification_metrics, selection_score, token_metrics


def test_classification_metrics_by_hand() -> None:
    # class 0: P=1/2 R=1/2 F1=0.5; class 1: P=2/3 R=1 F1=0.8; class 2: F1=0; class 3 absent: F1=0.
    y_true, y_pred = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    got = classification_metrics(y_true, y_pred, num_labels=4)
    assert got["accuracy"] == pytest.approx(0.6)
    assert got["macro_f1"] == pytest.approx((0.5 + 0.8 + 0 + 0) / 4)


def test_classification_macro_f1_counts_labels_absent_everywhere() -> None:
    perfect = classification_metrics([0, 1], [0, 1], num_labels=2)
    padded = classification_metrics([0, 1], [0, 1], num_labels=4)
    assert perfect == {"accuracy": 1.0, "macro_f1": 1.0}
    assert padded["macro_f1"] == pytest.approx(0.5)


def test_classification_rejects_mismatch_and_empty() -> None:
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0], num_labels=2)
    with pytest.raises(ValueError):
        classification_metrics([], [], num_labels=2)


def test_token_metrics_one_right_one_wrong_entity() -> None:
    y_true = [["B-PER", "I-PER", "O"], ["B-LOC", "O"]]
    y_pred = [["B-PER", "I-PER", "O"], ["B-ORG", "O"]]
    got = token_metrics(y_true, y_pred)
    assert got["precision"] == pytest.approx(0.5)
    assert got["recall"] == pytest.approx(0.5)
    assert got["f1"] == pytest.approx(0.5)
    assert got["accuracy"] == pytest.approx(4 / 5)


def test_token_metrics_spurious_entity_lowers_precision_only() -> None:
    got = token_metrics([["B-PER", "O", "O"]], [["B-PER", "O", "B-LOC"]])
    assert got["precision"] == pytest.approx(0.5)
    assert got["recall"] == pytest.approx(1.0)
    assert got["f1"] == pytest.approx(2 / 3)
    assert got["accuracy"] == pytest.approx(2 / 3)


def test_token_metrics_conlleval_mode_accepts_i_after_o() -> None:
    got = token_metrics([["O", "B-PER"]], [["O", "I-PER"]])
    assert got["f1"] == pytest.approx(1.0)
    assert got["accuracy"] == pytest.approx(0.5)


def test_token_metrics_bilou_unit_and_last_tags_count() -> None:
    # Two adjacent one-token entities; read without the L/U prefixes they would merge into one.
    tags = [["U-PER", "U-PER", "B-LOC", "L-LOC"]]
    assert token_metrics(tags, tags, scheme="bilou")["f1"] == pytest.approx(1.0)
    got = token_metrics(tags, [["U-PER", "O", "B-LOC", "L-LOC"]], scheme="BILOU")
    assert (got["precision"], got["recall"]) == (pytest.approx(1.0), pytest.approx(2 / 3))


def test_token_metrics_no_entities_scores_zero_and_bad_input_raises() -> None:
    got = token_metrics([["O", "O"]], [["O", "O"]])
    assert got["f1"] == 0.0 and got["accuracy"] == 1.0
    with pytest.raises(ValueError, match="IOB2"):
        token_metrics([["O"]], [["O"]], scheme="XYZ")
    with pytest.raises(ValueError):
        token_metrics([["O", "O"]], [["O"]])


RESULTS = {
    "intent": {"accuracy": 0.9, "macro_f1": 0.7},
    "ner": {"precision": 0.5, "recall": 0.7, "f1": 0.6, "accuracy": 0.95},
}
TYPES = primary_metrics({"intent": "classification", "ner": "token-classification"})


def test_primary_metrics() -> None:
    assert TYPES == {"intent": "accuracy", "ner": "f1"}
    with pytest.raises(ValueError, match="unknown task type"):
        primary_metrics({"x": "regression"})


def test_selection_score_mean_of_primary_metrics() -> None:
    assert selection_score(RESULTS, TYPES) == pytest.approx((0.9 + 0.6) / 2)


def test_selection_score_task_slash_metric() -> None:
    assert selection_score(RESULTS, TYPES, "ner/precision") == pytest.approx(0.5)
    assert selection_score(RESULTS, TYPES, "intent/macro_f1") == pytest.approx(0.7)


def test_selection_score_bare_metric_averages_tasks_that_have_it() -> None:
    assert selection_score(RESULTS, TYPES, "accuracy") == pytest.approx((0.9 + 0.95) / 2)
    assert selection_score(RESULTS, TYPES, "macro_f1") == pytest.approx(0.7)


@pytest.mark.parametrize("metric", ["bogus", "ner/macro_f1", "pos/f1"])
def test_selection_score_unknown_metric_lists_available(metric: str) -> None:
    with pytest.raises(ValueError, match="intent/accuracy"):
        selection_score(RESULTS, TYPES, metric)


def test_selection_score_needs_results_and_known_types() -> None:
    with pytest.raises(ValueError):
        selection_score({}, TYPES)
    with pytest.raises(ValueError, match="no primary metric"):
        selection_score(RESULTS, {"intent": "accuracy"})
