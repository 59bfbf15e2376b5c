"""Where a task's predictions go wrong, by task type: a confusion matrix for classification, F1 per entity type for
token tasks, F1 per label for multi-label tasks. Training computes it for the final model from the logits its final
evaluation computed anyway; the report shows it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from thawing.task_types.metrics import entity_report

SPLITS = ("dev", "test")


def confusion(spec, logits: Sequence[np.ndarray], gold: Sequence) -> dict:
    """Rows are the gold labels, columns the predicted ones (argmax), counts."""
    size = len(spec.labels)
    matrix = np.zeros((size, size), dtype=int)
    for row, label in zip(logits, gold, strict=True):
        matrix[int(label), int(np.argmax(row))] += 1
    return {"kind": "confusion", "labels": list(spec.labels), "matrix": matrix.tolist()}


def per_entity(spec, logits: Sequence[np.ndarray], gold: Sequence) -> dict:
    """seqeval's per-type scores over the tags the task type predicts (words past max_length count as "O")."""
    true_tags = [[spec.labels[t] for t in tags] for tags in gold]
    pred_tags = [spec.kind.tags(spec, words, len(tags)) for words, tags in zip(logits, gold, strict=True)]
    return {"kind": "per_type", "types": entity_report(true_tags, pred_tags, spec.tag_scheme)}


def per_label(spec, logits: Sequence[np.ndarray], gold: Sequence) -> dict:
    """F1 and support per label at the task's threshold (the one its metrics use)."""
    from sklearn.metrics import f1_score

    threshold = 0.5 if spec.threshold is None else spec.threshold
    probs = 1.0 / (1.0 + np.exp(-np.clip(np.stack(list(logits)).astype(np.float64), -60, 60)))
    truth, pred = np.asarray(list(gold)) > 0.5, probs > threshold
    scores = f1_score(truth.astype(int), pred.astype(int), average=None, zero_division=0,
                      labels=list(range(len(spec.labels))))
    return {"kind": "per_type", "types": {label: {"f1": float(f), "support": int(s)}
                                          for label, f, s in zip(spec.labels, scores, truth.sum(axis=0), strict=True)}}


# What each task type shows of its errors; a type without an entry shows its metrics only.
DETAILS: dict[str, Callable] = {
    "classification": confusion,
    "token-classification": per_entity,
    "multi-label": per_label,
    "pair-classification": confusion,
}


def split_entry(spec, logits: Sequence[np.ndarray], gold: Sequence) -> dict:
    """One task on one split: its example count, metrics and errors."""
    detail = DETAILS.get(spec.type)
    return {"examples": len(gold), "metrics": spec.kind.metrics(spec, logits, gold),
            "detail": detail(spec, logits, gold) if detail else None}
