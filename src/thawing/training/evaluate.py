"""Evaluation: logits for a task split (through the model, or from cached frozen features), and the
task's metrics against its gold labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from thawing.data.batching import Features, collate, inference_batches
from thawing.metrics import classification_metrics, token_metrics
from thawing.model.encoder import evaluating, progress
from thawing.model.multitask import MultiTaskModel, TaskSpec


@dataclass
class CachedSplit:
    """Frozen-encoder features of one task split, computed once.

    `features` holds sentence embeddings (N, D), or for token tasks the states of each word's first
    sub-token (M, H), sentence i owning rows `offsets[i]:offsets[i + 1]`.
    """

    features: torch.Tensor
    labels: torch.Tensor
    offsets: list[int] | None = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"features": self.features.numpy()}  # labels are not cached: the key covers inputs only
        if self.offsets is not None:
            arrays["offsets"] = np.asarray(self.offsets, dtype=np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], feats: Features) -> "CachedSplit":
        """Rebuild from a disk-cache entry (memory-mapped copy-on-write: read lazily, never written back),
        with labels from the current data."""
        offsets = arrays["offsets"].tolist() if "offsets" in arrays else None
        return cls(torch.from_numpy(arrays["features"]), _flat_labels(feats, offsets is not None), offsets)

    def rows(self, indices: list[int]) -> torch.Tensor:
        if self.offsets is None:
            return torch.as_tensor(indices)
        return torch.cat([torch.arange(self.offsets[i], self.offsets[i + 1]) for i in indices])


@torch.no_grad()
def compute_cached(model: MultiTaskModel, task: str, feats: Features, batch_size: int, device) -> CachedSplit:
    """Run the frozen encoder once over a split (eval mode, no gradients)."""
    with evaluating(model):
        return _compute_cached(model, task, feats, batch_size, device)


def _compute_cached(model: MultiTaskModel, task: str, feats: Features, batch_size: int, device) -> CachedSplit:
    token_task = model.specs[task].type != "classification"
    chunks, offsets = [], [0]
    for idx in progress(inference_batches(feats.lengths, batch_size, device), f"Caching {task}"):
        batch = collate(model.encoder, feats, idx)
        out = model.features(task, batch["input_ids"].to(device), batch["attention_mask"].to(device)).float()
        if not token_task:
            chunks.append((idx, out.cpu()))
            continue
        for row, i in enumerate(idx):  # keep word starts only: the head is applied per word
            starts = _word_positions(feats, i, batch["input_ids"].shape[1], model)
            chunks.append(([i], out[row, starts].cpu()))
    if not token_task:
        order = torch.as_tensor([i for idx, _ in chunks for i in idx])
        stacked = torch.cat([c for _, c in chunks])
        features = torch.empty_like(stacked)
        features[order] = stacked
        return CachedSplit(features, _flat_labels(feats, False))
    by_sentence = {idx[0]: states for idx, states in chunks}
    rows = []
    for i in range(len(feats)):
        rows.append(by_sentence[i])
        offsets.append(offsets[-1] + len(by_sentence[i]))
    return CachedSplit(torch.cat(rows), _flat_labels(feats, True), offsets)


def _flat_labels(feats: Features, token_task: bool) -> torch.Tensor:
    """Class ids, or for token tasks the tag of every word start, sentence after sentence."""
    if not token_task:
        return torch.as_tensor(feats.labels, dtype=torch.long)
    return torch.as_tensor([feats.labels[i][p] for i in range(len(feats)) for p in feats.word_starts[i]], dtype=torch.long)


def _word_positions(feats: Features, i: int, width: int, model: MultiTaskModel) -> list[int]:
    shift = width - len(feats.input_ids[i]) if model.encoder.tokenizer.padding_side == "left" else 0
    return [p + shift for p in feats.word_starts[i]]


@torch.no_grad()
def task_logits(model: MultiTaskModel, task: str, feats: Features, batch_size: int, device, cached: CachedSplit | None = None) -> list[np.ndarray]:
    """Logits per example: (C,) for classification, (words, C) for token tasks, in input order."""
    head = model.heads[task]
    with evaluating(model):
        if cached is not None:
            logits = head(cached.features.to(device)).float().cpu().numpy()
            if cached.offsets is None:
                return list(logits)
            return [logits[a:b] for a, b in zip(cached.offsets[:-1], cached.offsets[1:])]
        out: list[np.ndarray | None] = [None] * len(feats)
        for idx in inference_batches(feats.lengths, batch_size, device):
            batch = collate(model.encoder, feats, idx)
            logits = model(task, batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu().numpy()
            for row, i in enumerate(idx):
                if model.specs[task].type == "classification":
                    out[i] = logits[row]
                else:
                    out[i] = logits[row, _word_positions(feats, i, logits.shape[1], model)]
        return out  # type: ignore[return-value]


def score(spec: TaskSpec, logits: list[np.ndarray], gold: list) -> dict[str, float]:
    """Metrics of one task: accuracy and macro-F1, or entity-level precision, recall and F1."""
    if spec.type == "classification":
        return classification_metrics(gold, [int(np.argmax(x)) for x in logits], len(spec.labels))
    true_tags, pred_tags = [], []
    for words, tags in zip(logits, gold):
        predicted = [spec.labels[int(k)] for k in np.argmax(words, axis=-1)] if len(words) else []
        # Words cut off by max_length were never seen: they count as "O" (a miss), never dropped.
        pred_tags.append(predicted + ["O"] * (len(tags) - len(predicted)))
        true_tags.append([spec.labels[t] for t in tags])
    return token_metrics(true_tags, pred_tags, spec.tag_scheme)


def cached_batch(cached: CachedSplit, indices: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = cached.rows(indices)
    return cached.features[rows].to(device), cached.labels[rows].to(device)

