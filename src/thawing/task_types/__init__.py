"""Task types: everything that differs between a sentence classification task, a token classification task and a
multi-label task lives in its type, and nothing outside asks which type it holds.

A type says what its head reads (`reads`: the pooled "sentence" embedding, the "tokens" states, or the "pairs" of
sentence embeddings of a pair task's texts, (B, S, D)), and owns:
    read_split / read             a file's rows / one data record -> (line, input, raw label)
    label_set / example           the label set (`min_labels` at least) -> an `Example`
    build_head                    the module on top of what it reads (a head; for similarity and retrieval none
                                  that trains: the cosine, the embeddings themselves)
    featurize                     examples -> `Features` (token ids and labels as the loss wants them)
    loss                          logits and labels -> a summed loss, divided by the caller's divisor
    gather                        a batch's logits -> one array per example (per word for token tasks)
    metrics / primary_metric      logits and gold labels -> metrics; the metric that ranks models
    metric_names                  the names `metrics` returns (the config checks metric names against them)
    predict                       one example's logits -> the prediction a user sees
    centroid_head                 a head that needs no gradient step (the frozen-network baseline)
    decision_rule / hub_task      how logits become a prediction outside thawing (ONNX); the Hub's task name (card)

Add a type by writing a class with these members and registering it in `TASK_TYPES`.
"""

from __future__ import annotations

from thawing.task_types.classification import Classification
from thawing.task_types.multilabel import MultiLabel
from thawing.task_types.pair_classification import PairClassification
from thawing.task_types.retrieval import Retrieval
from thawing.task_types.similarity import Similarity
from thawing.task_types.token import TokenClassification

TASK_TYPES = {t.name: t for t in (Classification(), TokenClassification(), MultiLabel(), Similarity(),
                                  PairClassification(), Retrieval())}


def task_type(name: str):
    """The registered type called `name`.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in TASK_TYPES:
        raise ValueError(f"unknown task type '{name}'; choose one of {', '.join(TASK_TYPES)}")
    return TASK_TYPES[name]


def primary_metrics(types: dict[str, str]) -> dict[str, str]:
    """Each task's primary metric, from its type name."""
    return {task: task_type(kind).primary_metric for task, kind in types.items()}
