"""Multi-label classification: any number of labels per text (none included), a head over the pooled sentence
embedding with one independent yes/no per label, binary cross-entropy, micro- and macro-F1 and subset accuracy
(scikit-learn) at a probability threshold that can be tuned on dev."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from thawing.data.records import Example, Record, label_text, sorted_labels
from thawing.errors import InputError
from thawing.task_types.classification import Classification

# The probability thresholds `decide` tries: a coarse grid, so that a small dev set cannot over-fit a fine one.
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))
DEFAULT_THRESHOLD = 0.5


class MultiLabel(Classification):
    name = "multi-label"
    pairs = False  # no pair loss: not one label per sentence
    reads = "sentence"  # the head reads the pooled sentence embedding
    primary_metric = "micro_f1"
    min_labels = 1  # one label is a yes/no task: the rows without it are the other side
    metric_names = ("micro_f1", "macro_f1", "subset_accuracy")

    # ------------------------------------------------------------------ data
    def read(self, cfg, path: str, fmt: str, line: int, record: dict) -> Record:
        label = record.get(cfg.label_field)
        if fmt in ("csv", "tsv") and isinstance(label, str):  # a cell holds "a|b", or nothing when no label applies
            parts = [part.strip() for part in label.split(cfg.label_separator)] if label.strip() else []
            record = {**record, cfg.label_field: parts}
        return super().read(cfg, path, fmt, line, record)

    def read_label(self, cfg, path: str, line: int, label: Any) -> list[str]:
        if not isinstance(label, list):
            hint = f" (only CSV/TSV cells are split on '{cfg.label_separator}')" if isinstance(label, str) else ""
            raise InputError(f"expected a list of labels (strings or numbers), got {label!r:.80}{hint}", path=path,
                             line=line, field=cfg.label_field)
        # As for classification: str() of None, a list or an empty string would silently become a bogus label.
        for item in label:
            if isinstance(item, bool) or not isinstance(item, (str, int, float)) or item == "":
                raise InputError(f"expected each label to be a string or number, got {item!r:.80}", path=path,
                                 line=line, field=cfg.label_field)
        names = [label_text(item, path, line, cfg.label_field) for item in label]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise InputError(f"label(s) {', '.join(repeated)} repeated in one row", path=path, line=line,
                             field=cfg.label_field)
        return names

    def label_set(self, records: Sequence[Record]) -> list[str]:
        """The union of the train labels, sorted (numbers as numbers) for a stable id order.

        Raises:
            InputError: when no train row has a label: there would be nothing to learn.
        """
        labels = sorted_labels({label for _, _, names in records for label in names})
        if not labels:
            raise InputError("every train row has an empty label list: there are no labels to learn")
        return labels

    def example(self, cfg, record: Record, ids: dict[str, int], path: str, known: str) -> Example:
        line, text, names = record
        missing = next((name for name in names if name not in ids), None)
        if missing is not None:
            raise InputError(f"label '{missing}' is not {known}", path=path, line=line, field=cfg.label_field)
        hot = [0.0] * len(ids)
        for name in names:
            hot[ids[name]] = 1.0
        return Example(text=text, label=hot)

    def label_ids(self, gold: Any, ids: dict[str, int]) -> Any:
        """The label names a text has (any number, none included), one-hot."""
        hot = [0.0] * len(ids)
        for name in gold:
            hot[ids[str(name)]] = 1.0
        return hot

    # ------------------------------------------------------------------ model
    def loss(self, logits: torch.Tensor, labels: torch.Tensor, divisor: float | None = None) -> torch.Tensor:
        """Binary cross-entropy, averaged over the labels of each example (so that a task's loss does not grow with
        its label count); then the mean over examples, or their sum divided by `divisor` (the training loop
        averages over a whole update's micro-batches)."""
        per_example = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none").mean(-1)
        return per_example.mean() if divisor is None else per_example.sum() / divisor

    @torch.no_grad()
    def centroid_head(self, head, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Turn the head into one binary nearest-centroid rule per label, with no gradient step.

        For label k with mean p of its positive examples and mean n of its negatives, the logit
        x.(p - n) - (|p|^2 - |n|^2) / 2 equals (|x - n|^2 - |x - p|^2) / 2: positive exactly when x is closer to
        the positives. A label without positives (negatives) is never (always) predicted.

        Args:
            head: a head whose last module is a `Linear` (an MLP head is replaced by a linear one).
            features: (N, D) sentence embeddings.
            labels: (N, C) multi-hot rows; rows with a negative entry (unlabelled) are left out.
        """
        last = head.net[-1]
        if len(head.net) != 2:  # MLP: as in `centroid_init`, keep only dropout + a fresh linear
            head.net = nn.Sequential(head.net[0], nn.Linear(features.shape[1], last.out_features)).to(features.device)
            last = head.net[-1]
        keep = (labels >= 0).all(dim=1)
        x = features[keep].to(last.weight.dtype)
        positive = labels[keep].to(x.dtype).T  # (C, N)
        negative = 1.0 - positive
        pos_count, neg_count = positive.sum(1), negative.sum(1)
        pos_mean = positive @ x / pos_count.clamp(min=1).unsqueeze(1)
        neg_mean = negative @ x / neg_count.clamp(min=1).unsqueeze(1)
        both = (pos_count > 0) & (neg_count > 0)
        last.weight.copy_(torch.where(both.unsqueeze(1), pos_mean - neg_mean, torch.zeros_like(pos_mean)))
        bias = -0.5 * ((pos_mean * pos_mean).sum(1) - (neg_mean * neg_mean).sum(1))
        fixed = torch.where(pos_count > 0, torch.full_like(bias, 1e4), torch.full_like(bias, -1e4))
        last.bias.copy_(torch.where(both, bias, fixed))

    # ------------------------------------------------------------------ results
    def decide(self, spec, logits: Callable[[], Sequence[np.ndarray]], gold: Sequence) -> None:
        """Tune the threshold on dev when the config asked for it (`threshold: tune` leaves it None): the grid
        value with the best micro-F1, ties going to the one closest to 0.5. A set threshold stays as it is, and
        `logits()` (the dev logits) is then never computed."""
        if spec.threshold is not None:
            return
        probs, truth = _probs(logits()), _multi_hot(gold)
        spec.threshold = max(THRESHOLDS, key=lambda t: (_micro_f1(probs > t, truth), -abs(t - DEFAULT_THRESHOLD)))

    def decision_rule(self, spec) -> dict:
        """Sigmoid per label; every label whose probability is above the threshold."""
        return {"activation": "sigmoid", "rule": "probability > threshold", "threshold": _threshold(spec)}

    def metrics(self, spec, logits: Sequence[np.ndarray], gold: Sequence) -> dict[str, float]:
        """Micro-F1, macro-F1 over every label of the label set (a label with no gold and no predicted example
        counts as F1 0, as for classification) and subset accuracy (the whole label set exactly right)."""
        if len(gold) != len(logits):
            raise ValueError(f"{len(gold)} gold rows but {len(logits)} predictions")
        if not len(gold):
            raise ValueError("cannot score an empty evaluation set")
        from sklearn.metrics import accuracy_score, f1_score  # lazily: scikit-learn is slow to import

        truth, pred = _multi_hot(gold), _probs(logits) > _threshold(spec)
        # scikit-learn reads a single column as binary classes (0 and 1), not as one label: a constant extra column
        # keeps the arrays multi-label; `labels` leaves it out of the F1s, and it changes no row's exact match.
        truth, pred = (np.pad(a, ((0, 0), (0, 1))).astype(int) for a in (truth, pred))
        labels = list(range(len(spec.labels)))
        return {
            "micro_f1": float(f1_score(truth, pred, labels=labels, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(truth, pred, labels=labels, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(truth, pred)),
        }

    def predict(self, spec, logits: np.ndarray, example: Example) -> dict:  # noqa: ARG002 (the task-type interface)
        probs = _probs([logits])[0]
        chosen = [label for label, p in zip(spec.labels, probs, strict=True) if p > _threshold(spec)]
        return {"labels": chosen, "probs": {label: float(p) for label, p in zip(spec.labels, probs, strict=True)}}


def _threshold(spec) -> float:
    """The threshold in use: a threshold still to be tuned (None) counts as 0.5 until `decide` sets it."""
    return DEFAULT_THRESHOLD if spec.threshold is None else spec.threshold


def _probs(logits: Sequence[np.ndarray]) -> np.ndarray:
    """(N, C) sigmoid probabilities (torch's sigmoid: no overflow warning for very negative logits)."""
    return torch.sigmoid(torch.as_tensor(np.stack(list(logits)), dtype=torch.float32)).numpy()


def _multi_hot(gold: Sequence) -> np.ndarray:
    return np.asarray(list(gold), dtype=np.float32) > 0.5


def _micro_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    """2 TP / (2 TP + FP + FN) over every (example, label) pair; 0 when nothing is predicted or gold."""
    denominator = int(pred.sum() + truth.sum())
    return 2.0 * int((pred & truth).sum()) / denominator if denominator else 0.0
