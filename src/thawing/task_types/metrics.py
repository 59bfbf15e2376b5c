"""Evaluation metrics per task type, and the single score that picks the best checkpoint.

Classification reports accuracy and macro-F1 (scikit-learn); token classification reports
entity-level precision, recall and F1 in seqeval's default mode, which reproduces the conlleval
script and so the standard CoNLL score, plus token-level accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from thawing.data.tags import TAG_SCHEMES

# conlleval mode knows the B/I/E/S prefixes but not BILOU's L/U, which mean exactly E/S.
_BILOU_TO_IOBES = {"L": "E", "U": "S"}


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 of class predictions.

    Macro-F1 averages over every label of the label set (`0 .. num_labels-1`), including labels that
    appear in neither `y_true` nor `y_pred`; those count as F1 0. This keeps the score comparable
    across evaluation sets and epochs, at the price of penalising a split that lacks a rare label.

    Args:
        y_true: Gold class ids.
        y_pred: Predicted class ids, same length.
        num_labels: Size of the task's label set.

    Returns:
        {"accuracy": ..., "macro_f1": ...}.

    Raises:
        ValueError: If the sequences differ in length or are empty.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    if not y_true:
        raise ValueError("cannot score an empty evaluation set")
    from sklearn.metrics import accuracy_score, f1_score  # lazily: scikit-learn is slow to import

    labels = list(range(num_labels))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)),
    }


def _to_conll(sentences: list[list[str]], scheme: str) -> list[list[str]]:
    if scheme != "BILOU":
        return sentences
    return [[_BILOU_TO_IOBES.get(t[:1], t[:1]) + t[1:] if t != "O" else t for t in s] for s in sentences]


def token_metrics(y_true: list[list[str]], y_pred: list[list[str]], scheme: str = "IOB2") -> dict[str, float]:
    """Entity-level precision, recall and F1 (micro-averaged), and token-level accuracy.

    Entities are read in seqeval's default (conlleval) mode, so an `I-X` after `O` starts an
    entity, as in the official CoNLL scorer. BILOU tags are rewritten to IOBES first, since
    conlleval mode does not know the `L-`/`U-` prefixes.

    Args:
        y_true: Gold tags, one list per sentence.
        y_pred: Predicted tags, same shape.
        scheme: The tag scheme, one of `TAG_SCHEMES` (case-insensitive).

    Returns:
        {"precision", "recall", "f1", "accuracy"}; a score with a zero denominator is 0.

    Raises:
        ValueError: On an unknown scheme, or if the sentences or their lengths differ.
    """
    name = scheme.upper()
    if name not in TAG_SCHEMES:
        raise ValueError(f"unknown tag scheme '{scheme}'; choose one of {', '.join(TAG_SCHEMES)}")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} sentences but y_pred has {len(y_pred)}")
    for i, (gold, pred) in enumerate(zip(y_true, y_pred, strict=True)):
        if len(gold) != len(pred):
            raise ValueError(f"sentence {i}: {len(gold)} gold tags but {len(pred)} predicted")
    n_tokens = sum(len(s) for s in y_true)
    if n_tokens == 0:
        raise ValueError("cannot score an empty evaluation set")
    gold, pred = _to_conll(y_true, name), _to_conll(y_pred, name)
    correct = sum(g == p for gs, ps in zip(y_true, y_pred, strict=True) for g, p in zip(gs, ps, strict=True))
    return {
        "precision": float(_seqeval().precision_score(gold, pred, zero_division=0)),
        "recall": float(_seqeval().recall_score(gold, pred, zero_division=0)),
        "f1": float(_seqeval().f1_score(gold, pred, zero_division=0)),
        "accuracy": correct / n_tokens,
    }


def entity_report(y_true: list[list[str]], y_pred: list[list[str]], scheme: str = "IOB2") -> dict[str, dict]:
    """Precision, recall, F1 and support per entity type, read as `token_metrics` reads entities (conlleval mode).

    Returns:
        {type: {"precision", "recall", "f1", "support"}}, types sorted by name.
    """
    gold, pred = _to_conll(y_true, scheme.upper()), _to_conll(y_pred, scheme.upper())
    report = _seqeval().classification_report(gold, pred, output_dict=True, zero_division=0)
    return {
        kind: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
               "support": int(v["support"])}
        for kind, v in sorted(report.items()) if not kind.endswith(" avg")
    }


def correlations(predicted: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    """Spearman's and Pearson's correlation of predicted scores with gold scores (scipy.stats). Where one side is
    constant a correlation is undefined: it counts as 0 (no order found), keeping the records strict JSON."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(gold)} gold scores but {len(predicted)} predictions")
    if len(gold) < 2:
        raise ValueError("a correlation needs at least 2 pairs")
    import warnings

    from scipy.stats import pearsonr, spearmanr

    with warnings.catch_warnings():  # a constant input warns, and gives NaN: counted as 0 below
        warnings.simplefilter("ignore")
        values = {"spearman": spearmanr(predicted, gold).statistic, "pearson": pearsonr(predicted, gold).statistic}
    return {name: float(v) if math.isfinite(v) else 0.0 for name, v in values.items()}


def ranking_metrics(ranks: Sequence[int]) -> dict[str, float]:
    """Retrieval metrics from each query's rank of its one relevant document (1 = first): MRR@10, Recall@1,
    Recall@10 and nDCG@10 (with one relevant document, 1 / log2(rank + 1) within the top 10), means over queries."""
    if not ranks:
        raise ValueError("cannot score an empty evaluation set")
    r = np.asarray(ranks, dtype=np.float64)
    top = r <= 10
    return {
        "mrr_at_10": float(np.mean(np.where(top, 1.0 / r, 0.0))),
        "recall_at_1": float(np.mean(r <= 1)),
        "recall_at_10": float(np.mean(top)),
        "ndcg_at_10": float(np.mean(np.where(top, 1.0 / np.log2(r + 1.0), 0.0))),
    }


def selection_score(results: dict[str, dict[str, float]], primary: dict[str, str], metric: str | None = None) -> float:
    """The one number that ranks checkpoints (higher is better).

    Args:
        results: Metrics per task, e.g. {"intent": {"accuracy": 0.9, "macro_f1": 0.8}}.
        primary: Each task's primary metric (its task type's, e.g. accuracy, or entity F1 for token tasks).
        metric: None for the mean over tasks of each task's primary metric; "task/metric" for that
            single value; a bare metric name for its mean over the tasks that report it.

    Returns:
        The score.

    Raises:
        ValueError: If there are no results, a task has no primary metric or lacks its value,
            or `metric` names nothing in `results` (the message lists what is available).
    """
    if not results:
        raise ValueError("no evaluation results to select on")
    available = sorted(f"{task}/{name}" for task, values in results.items() for name in values)
    if metric is None:
        scores = []
        for task, values in results.items():
            name = primary.get(task)
            if name is None:
                raise ValueError(f"task '{task}' has no primary metric")
            if name not in values:
                raise ValueError(f"task '{task}' has no '{name}' result; available: {', '.join(available)}")
            scores.append(values[name])
        return float(sum(scores) / len(scores))
    # Metric names never contain '/', so the last one separates the task (which might).
    task, sep, name = metric.rpartition("/")
    if sep:
        if task in results and name in results[task]:
            return float(results[task][name])
    else:
        scores = [values[name] for values in results.values() if name in values]
        if scores:
            return float(sum(scores) / len(scores))
    raise ValueError(f"selection metric '{metric}' matches no result; available: {', '.join(available)}")


def _seqeval():
    # Imported when first needed: training a classification-only or speed-only job never pays for it.
    from seqeval import metrics

    return metrics
