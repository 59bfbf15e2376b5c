"""The final model, looked at closely: each task's metrics on dev and test, with where it goes wrong (a confusion
matrix for classification, F1 per entity type for token tasks, F1 per label for multi-label tasks).

The run directory holds the model but not the data, so this is computed once, at the end of training from the logits
the final evaluation computed anyway (`evaluation`), and kept in `report/evaluation.json`; a later `thawing report`
reuses it while `final/` is unchanged, and recomputes it from the run's data (`evaluate_final`) when it can.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from thawing.errors import ThawingError
from thawing.run_dir import RunDir

log = logging.getLogger(__name__)
SPLITS = ("dev", "test")


def confusion(spec, logits: Sequence[np.ndarray], gold: Sequence) -> dict:
    """Rows are the gold labels, columns the predicted ones (argmax), counts."""
    size = len(spec.labels)
    matrix = np.zeros((size, size), dtype=int)
    for row, label in zip(logits, gold):
        matrix[int(label), int(np.argmax(row))] += 1
    return {"kind": "confusion", "labels": list(spec.labels), "matrix": matrix.tolist()}


def per_entity(spec, logits: Sequence[np.ndarray], gold: Sequence) -> dict:
    """seqeval's per-type scores over the tags the task type predicts (words past max_length count as "O")."""
    from thawing.metrics import entity_report

    true_tags = [[spec.labels[t] for t in tags] for tags in gold]
    pred_tags = [spec.kind.tags(spec, words, len(tags)) for words, tags in zip(logits, gold)]
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
                                          for label, f, s in zip(spec.labels, scores, truth.sum(axis=0))}}


# What each task type shows of its errors; a type without an entry shows its metrics only.
DETAILS: dict[str, Callable] = {
    "classification": confusion,
    "token-classification": per_entity,
    "multi-label": per_label,
}


def final_stamp(run: RunDir) -> int:
    """What identifies the final model: the time its heads were written (final/ is replaced whole)."""
    return run.heads.stat().st_mtime_ns


def split_entry(spec, logits: Sequence[np.ndarray], gold: Sequence) -> dict:
    """One task on one split: its example count, metrics and errors."""
    detail = DETAILS.get(spec.type)
    return {"examples": len(gold), "metrics": spec.kind.metrics(spec, logits, gold),
            "detail": detail(spec, logits, gold) if detail else None}


def evaluation(run: RunDir, tasks: dict[str, dict[str, dict]]) -> dict:
    """The breakdown of the run's current final model from its `split_entry`s ({task: {split: entry}})."""
    return {"final": final_stamp(run), "tasks": tasks}


def evaluate_final(run: RunDir) -> dict:
    """Every task of the final model on each of its dev and test splits: {"final": stamp, "tasks": {task: {split:
    {"metrics": ..., "detail": ...}}}}.

    Raises:
        ThawingError: the model or its data cannot be read (e.g. the data files moved).
    """
    from thawing.api import load
    from thawing.config import load_config
    from thawing.inference import split_examples

    config = load_config(run.config)
    model = load(run.path)
    tasks: dict[str, dict] = {}
    for task, spec in model.tasks.items():
        for split in SPLITS:
            examples = split_examples(config, task, spec.labels, split)
            if not examples:
                continue
            tasks.setdefault(task, {})[split] = split_entry(spec, model.logits(task, examples),
                                                            [e.label for e in examples])
    return evaluation(run, tasks)


def final_evaluation(run: RunDir, previous: dict | None, compute: bool = True) -> tuple[dict | None, str | None]:
    """The evaluation for the report: `previous` (the last report's) while it describes the current final model,
    else a fresh one when `compute`. Returns (evaluation or None, why there is none)."""
    if not run.heads.is_file():
        return None, "the run has no final model"
    if previous and previous.get("final") == final_stamp(run):
        return previous, None
    if not compute:
        return None, "not computed (the report was asked not to evaluate)"
    try:
        return evaluate_final(run), None
    except (ThawingError, OSError) as exc:  # e.g. data files that moved since training: the rest of the report stands
        log.warning("no final-model evaluation for %s: %s", run.path, exc)
        return None, f"not computed: {exc}"
