"""Retrieval: a query, its positive and, where given, a hard negative; no head: the multiple-negatives ranking loss
(a softmax over the cosines of each query with every positive and negative of its batch, at a temperature) trains the
shared encoder. Metrics rank the split's corpus (every positive and negative of the split, each distinct text once)
for each query: MRR@10 (primary), Recall@1 and @10, nDCG@10. No training batch holds a positive twice
(`Features.keys`): a repeated positive would be another query's in-batch negative."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from thawing.data.batching import Features
from thawing.data.records import Example, Record
from thawing.errors import InputError
from thawing.task_types.pair import PairTask, read_texts

NO_NEGATIVE = -1  # an example's negative id where it has none


class Retrieval(PairTask):
    name = "retrieval"
    primary_metric = "mrr_at_10"
    min_labels = 0  # no label set
    metric_names: tuple[str, ...] = ("mrr_at_10", "recall_at_1", "recall_at_10", "ndcg_at_10")
    hub_task = "sentence-similarity"
    inputs = ("query", "passage")

    def text_fields(self, cfg) -> list[str]:
        return [cfg.query_field, cfg.positive_field]

    # ------------------------------------------------------------------ data
    def read_split(self, cfg, path: str, fmt: str, rows: Sequence[tuple[int, dict]]  # noqa: ARG002
                   ) -> list[Record]:
        """Every row's texts, and its label: the ids of its positive and negative in the split's corpus (each distinct
        text one id). Hard negatives come in every row of a split or in none (a batch holds as many texts per row).

        Raises:
            InputError: naming the row and field of the first problem.
        """
        with_negative = [line for line, record in rows if cfg.negative_field in record]
        if with_negative and len(with_negative) != len(rows):
            line = next(line for line, record in rows if cfg.negative_field not in record)
            raise InputError(f"missing field (line {with_negative[0]} has a hard negative: give one in every row of "
                             "the split, or in none)", path=path, line=line, field=cfg.negative_field)
        corpus: dict[str, int] = {}
        records = []
        for line, record in rows:
            fields = self.text_fields(cfg) + ([cfg.negative_field] if with_negative else [])
            texts = read_texts(record, fields, path, line)
            ids = [corpus.setdefault(text, len(corpus)) for text in texts[1:]]
            records.append((line, texts, ids + [NO_NEGATIVE] * (2 - len(ids))))
        return records

    def label_set(self, records: Sequence[Record]) -> list[str]:  # noqa: ARG002 (the task-type interface)
        return []

    def fixed_labels(self, labels: list[str]) -> dict:  # noqa: ARG002 (the task-type interface)
        return {}

    def example(self, cfg, record: Record, ids: dict[str, int], path: str, known: str) -> Example:  # noqa: ARG002
        _, texts, label = record
        return Example(texts=texts, label=list(label))

    def label_ids(self, gold: Any, ids: dict[str, int]) -> Any:  # noqa: ARG002 (the task-type interface)
        """Refused: a retrieval task is scored over a split's corpus, which a list of gold labels does not give."""
        raise InputError("a retrieval task is scored by ranking a split's corpus, not against one label per input: "
                         "evaluate it on a file (thawing evaluate --data task=FILE, rows {query, positive})")

    def featurize(self, encoder, examples: Sequence[Example], labelled: bool, prompt: str | None) -> Features:
        feats = super().featurize(encoder, examples, labelled, prompt)
        if labelled:
            feats.keys = [e.label[0] for e in examples]  # the positive's id: never twice in a training batch
        return feats

    # ------------------------------------------------------------------ model
    def build_head(self, in_features: int, spec, cfg):  # noqa: ARG002 (the task-type interface)
        from thawing.task_types.heads import Embeddings

        return Embeddings()

    def objective(self, cfg) -> dict:
        return {"temperature": cfg.temperature}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, divisor: float | None = None,  # noqa: ARG002
             temperature: float = 0.05) -> torch.Tensor:
        """Multiple-negatives ranking: each query's cosines with every positive (and hard negative) of the batch, over
        `temperature`, under a softmax whose target is its own positive. `logits` are the texts' embeddings
        (B, S, D); `labels` only count the items. The mean over queries, or their sum divided by `divisor`."""
        unit = F.normalize(logits.float(), dim=-1)
        queries, candidates = unit[:, 0], unit[:, 1:].transpose(0, 1).reshape(-1, unit.shape[-1])
        scores = queries @ candidates.T / temperature  # (B, B * (S - 1)): positives first, then negatives
        target = torch.arange(len(queries), device=scores.device)
        reduction = "mean" if divisor is None else "sum"
        value = F.cross_entropy(scores, target, reduction=reduction)
        return value if divisor is None else value / divisor

    # ------------------------------------------------------------------ results
    def decision_rule(self, spec) -> dict:  # noqa: ARG002 (the task-type interface)
        return {"activation": "none", "rule": "rank passages by the cosine of their embedding with the query's"}

    def metrics(self, spec, logits: Sequence[np.ndarray], gold: Sequence) -> dict[str, float]:  # noqa: ARG002
        from thawing.task_types.metrics import ranking_metrics

        return ranking_metrics(ranks(logits, gold))

    def predict(self, spec, logits: np.ndarray, example: Example) -> dict:  # noqa: ARG002 (the task-type interface)
        return {"score": _cosine(logits[0], logits[1])}


def ranks(embeddings: Sequence[np.ndarray], gold: Sequence) -> list[int]:
    """Each query's rank (1 = first) of its positive among the split's corpus, by cosine: example i's embeddings are
    (query, positive[, negative]), `gold[i]` the corpus ids of its positive and negative. A tie counts against the
    positive (a model that embeds everything alike ranks nothing)."""
    corpus: dict[int, np.ndarray] = {}
    for emb, (positive, negative) in zip(embeddings, gold, strict=True):
        corpus[int(positive)] = emb[1]
        if negative != NO_NEGATIVE:
            corpus[int(negative)] = emb[2]
    ids = sorted(corpus)
    column = {doc: j for j, doc in enumerate(ids)}
    docs = _unit(np.stack([corpus[d] for d in ids]))
    queries = _unit(np.stack([emb[0] for emb in embeddings]))
    scores = queries @ docs.T
    own = scores[np.arange(len(gold)), [column[int(p)] for p, _ in gold]]
    return [int(n) for n in (scores >= own[:, None]).sum(axis=1)]


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(_unit(np.asarray(a)) @ _unit(np.asarray(b)))
