"""Sentence classification: one label per text, a head over the pooled sentence embedding, cross-entropy, accuracy
and macro-F1 (scikit-learn)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from thawing.data.batching import IGNORE, Features, featurize_texts
from thawing.data.records import Example, Record, check_label_kinds, field_value, label_text, sorted_labels
from thawing.errors import InputError


class Classification:
    name = "classification"
    reads = "sentence"  # the head reads the pooled sentence embedding
    primary_metric = "accuracy"
    min_labels = 2  # distinct labels train must hold: with one class there is nothing to learn
    # what `metrics` returns; the config checks metric names against them
    metric_names: tuple[str, ...] = ("accuracy", "macro_f1")
    hub_task = "text-classification"  # the Hugging Face task name, for the model card
    pairs = True  # a pair loss applies: one label per sentence (training/pairs.py)
    has_head = True  # a head of its own, which trains (similarity and retrieval have none)

    # ------------------------------------------------------------------ data
    def read_split(self, cfg, path: str, fmt: str, rows: Sequence[tuple[int, dict]]) -> list[Record]:
        """Every row of one file, checked on its own (`read`) and together (labels of one kind)."""
        records = [self.read(cfg, path, fmt, line, record) for line, record in rows]
        check_label_kinds(((line, record.get(cfg.label_field)) for line, record in rows), path, cfg.label_field)
        return records

    def read(self, cfg, path: str, fmt: str, line: int, record: dict) -> Record:  # noqa: ARG002 (the task-type interface)
        text = field_value(record, cfg.text_field, path, line)
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"expected a non-empty string, got {text!r}", path=path, line=line, field=cfg.text_field)
        return line, text, self.read_label(cfg, path, line, field_value(record, cfg.label_field, path, line))

    def read_label(self, cfg, path: str, line: int, label: Any) -> Any:
        return label_text(label, path, line, cfg.label_field)

    def label_set(self, records: Sequence[Record]) -> list[str]:
        """The train labels, sorted (numbers as numbers) for a stable id order."""
        return sorted_labels({label for _, _, label in records})

    def fixed_labels(self, labels: list[str]) -> dict:
        """The task config's settings that fix its label set to a trained model's `labels` (`TaskSpec.labels`)."""
        return {"labels": labels}

    def example(self, cfg, record: Record, ids: dict[str, int], path: str, known: str) -> Example:
        line, text, label = record
        if label not in ids:
            raise InputError(f"label '{label}' is not {known}", path=path, line=line, field=cfg.label_field)
        return Example(text=text, label=ids[label])

    def example_for_prediction(self, item: str | Sequence[str]) -> Example:
        return Example(text=item if isinstance(item, str) else " ".join(item))

    def label_ids(self, gold: Any, ids: dict[str, int]) -> Any:
        """A gold label as a user holds it (a label name) as the example's label; KeyError names an unknown one."""
        return ids[str(gold)]

    # ------------------------------------------------------------------ model
    def build_head(self, in_features: int, spec, cfg):
        """The task's head over `in_features` (what it reads), from its `head:` settings `cfg`."""
        from thawing.task_types.heads import Head

        return Head(in_features, len(spec.labels), cfg)

    def featurize(self, encoder, examples: Sequence[Example], labelled: bool, prompt: str | None) -> Features:
        labels = [e.label for e in examples] if labelled else None
        return featurize_texts(encoder, [e.text for e in examples], labels, prompt)

    def objective(self, cfg) -> dict:  # noqa: ARG002 (the task-type interface)
        """The loss settings its `loss` takes from the task's config (saved with the task: `TaskSpec.objective`)."""
        return {}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, divisor: float | None = None) -> torch.Tensor:
        """Cross-entropy over labelled items: their mean, or their sum divided by `divisor` (the training loop
        averages over a whole update's micro-batches)."""
        flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
        if divisor is None:
            return F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE)
        return F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE, reduction="sum") / divisor

    def gather(
        self, logits: np.ndarray, feats: Features, indices: Sequence[int], left_padded: bool  # noqa: ARG002 (the task-type interface)
    ) -> list[np.ndarray]:
        """A batch's logits (B, C) -> one (C,) array per example."""
        return [logits[row] for row in range(len(indices))]

    def centroid_head(self, head, features: torch.Tensor, labels: torch.Tensor) -> None:
        from thawing.task_types.heads import centroid_init

        keep = labels >= 0
        centroid_init(head, features[keep], labels[keep])

    # ------------------------------------------------------------------ results
    def decide(self, spec, logits: Callable[[], Sequence[np.ndarray]], gold: Sequence) -> None:
        """Fit the task's decision rule on dev after training (multi-label: its threshold). `logits()` computes the
        dev logits, only if the rule needs them. Classification decides by argmax: nothing to fit."""

    def decision_rule(self, spec) -> dict:  # noqa: ARG002 (the task-type interface)
        """How logits become a prediction, for code outside thawing (an ONNX export): softmax, then argmax."""
        return {"activation": "softmax", "rule": "argmax"}

    def metrics(self, spec, logits: Sequence[np.ndarray], gold: Sequence) -> dict[str, float]:
        from thawing.task_types.metrics import classification_metrics

        return classification_metrics(list(gold), [int(np.argmax(x)) for x in logits], len(spec.labels))

    def predict(self, spec, logits: np.ndarray, example: Example) -> dict:  # noqa: ARG002 (the task-type interface)
        probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float32), -1).tolist()
        return {"label": spec.labels[int(np.argmax(logits))], "probs": dict(zip(spec.labels, probs, strict=True))}
