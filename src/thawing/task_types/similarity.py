"""Semantic similarity (STS): two sentences and a score, no head: the cosine of their embeddings is the prediction,
trained through the shared encoder by CoSENT (the default) or the squared error to the score scaled to [0, 1];
Spearman (the primary metric) and Pearson correlations of the cosine with the gold score (scipy.stats)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from thawing.data.records import Example, Record, field_value
from thawing.errors import InputError
from thawing.task_types.pair import PairTask, read_texts

COSENT_SCALE = 20.0  # CoSENT's scale on the cosines (its paper's and sentence-transformers' default)


class Similarity(PairTask):
    name = "similarity"
    primary_metric = "spearman"
    min_labels = 0  # no label set: its "labels" are the score range (low, high), from the config or train
    metric_names = ("spearman", "pearson")
    hub_task = "sentence-similarity"

    # ------------------------------------------------------------------ data
    def read_split(self, cfg, path: str, fmt: str, rows: Sequence[tuple[int, dict]]) -> list[Record]:
        return [self.read(cfg, path, fmt, line, record) for line, record in rows]

    def read(self, cfg, path: str, fmt: str, line: int, record: dict) -> Record:  # noqa: ARG002 (the interface)
        texts = read_texts(record, self.text_fields(cfg), path, line)
        value = field_value(record, cfg.score_field, path, line)
        if isinstance(value, str):  # CSV and TSV cells are text
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"expected a number (the pair's score), got {value!r:.80}", path=path, line=line,
                             field=cfg.score_field)
        return line, texts, float(value)

    def label_set(self, records: Sequence[Record]) -> list[str]:
        """The score range (lowest, highest) of train, as text: it scales scores to [0, 1].

        Raises:
            InputError: when every score is the same: there is no order to learn.
        """
        scores = [score for _, _, score in records]
        if not scores:
            return []
        low, high = min(scores), max(scores)
        if low == high:
            raise InputError(f"every train score is {low:g}: a similarity task needs scores that differ (or give "
                             "score_range)")
        return [repr(low), repr(high)]

    def fixed_labels(self, labels: list[str]) -> dict:
        """A trained model's "labels" are its score range."""
        return {"score_range": tuple(float(x) for x in labels)}

    def example(self, cfg, record: Record, ids: dict[str, int], path: str, known: str) -> Example:  # noqa: ARG002
        _, texts, score = record
        return Example(texts=texts, label=self.label_ids(score, ids))

    def label_ids(self, gold: Any, ids: dict[str, int]) -> Any:
        """A gold score as a user holds it, scaled to [0, 1] by the task's range; a score past the range (a dev score
        above train's highest) is clipped, as a cosine cannot go past it either."""
        low, high = (float(x) for x in ids)
        return min(1.0, max(0.0, (float(gold) - low) / (high - low)))

    # ------------------------------------------------------------------ model
    def build_head(self, in_features: int, spec, cfg):  # noqa: ARG002 (the task-type interface)
        from thawing.task_types.heads import Cosine

        return Cosine()

    def objective(self, cfg) -> dict:
        return {"loss": cfg.loss}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, divisor: float | None = None,
             loss: str = "cosent") -> torch.Tensor:
        """CoSENT: log(1 + sum over pairs (i, j) of the batch with score_i > score_j of exp(20 (cos_j - cos_i))), a
        ranking loss over the whole batch, counted once per pair of texts; or the squared error between the cosine
        and the score. The mean over the batch's pairs, or their sum divided by `divisor`."""
        cos, gold = logits.reshape(-1).float(), labels.reshape(-1).float()
        if loss == "cosine_mse":
            error = (cos - gold) ** 2
            return error.mean() if divisor is None else error.sum() / divisor
        scaled = cos * COSENT_SCALE
        diff = scaled.unsqueeze(0) - scaled.unsqueeze(1)  # diff[i, j] = s_j - s_i
        wrong = diff[gold.unsqueeze(1) > gold.unsqueeze(0)]  # pairs that should rank i above j
        # 0 * the sum: a batch with no ordered pair still has a gradient path (a zero one).
        value = torch.logsumexp(torch.cat([wrong.new_zeros(1), wrong]), dim=0) + 0.0 * scaled.sum()
        return value if divisor is None else value * len(cos) / divisor

    # ------------------------------------------------------------------ results
    def decision_rule(self, spec) -> dict:  # noqa: ARG002 (the task-type interface)
        return {"activation": "none", "rule": "the cosine of the two sentence embeddings"}

    def metrics(self, spec, logits: Sequence[np.ndarray], gold: Sequence) -> dict[str, float]:  # noqa: ARG002
        from thawing.task_types.metrics import correlations

        return correlations([float(np.asarray(x).reshape(-1)[0]) for x in logits], [float(g) for g in gold])

    def predict(self, spec, logits: np.ndarray, example: Example) -> dict:  # noqa: ARG002 (the task-type interface)
        return {"score": float(np.asarray(logits).reshape(-1)[0])}
