"""Frozen-encoder features, computed once: when nothing below the heads trains, every example's head input (pooled
sentence embeddings, or the states of each word's first sub-token) is computed once per stage, or read back from the
disk cache (`thawing.store.cache`) that an earlier stage or run with the same weights, settings and inputs wrote.
A sentence embedding is computed once per distinct text within a stage, whichever tasks and splits hold the text
(a pair task's two sentences, a classification task over the same sentences).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from thawing.data.batching import Features, collate, sorted_batches, to_device
from thawing.distributed import progress
from thawing.model.encoder import evaluating
from thawing.model.multitask import MultiTaskModel
from thawing.task_types.token import word_positions

log = logging.getLogger(__name__)


@dataclass
class CachedSplit:
    """Frozen-encoder features of one task split.

    `features` holds sentence embeddings (N, D), or for token tasks the states of each word's first sub-token
    (M, H), sentence i owning rows `offsets[i]:offsets[i + 1]`. `labels` are the matching labels.
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
    def from_arrays(cls, arrays: dict[str, np.ndarray], feats: Features) -> CachedSplit:
        """Rebuild from a disk-cache entry (memory-mapped copy-on-write: read lazily, never written back), with labels
        from the current data."""
        offsets = arrays["offsets"].tolist() if "offsets" in arrays else None
        return cls(torch.from_numpy(arrays["features"]), flat_labels(feats), offsets)

    def rows(self, indices: list[int]) -> torch.Tensor:
        if self.offsets is None:
            return torch.as_tensor(indices)
        return torch.cat([torch.arange(self.offsets[i], self.offsets[i + 1]) for i in indices])

    def batch(self, indices: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of some examples, on `device`."""
        rows = self.rows(indices)
        return to_device(self.features[rows], device), to_device(self.labels[rows], device)

    def split_rows(self, values: np.ndarray) -> list[np.ndarray]:
        """Per-row `values` (one per feature row) back to one array per example."""
        if self.offsets is None:
            return list(values)
        return [values[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]


def flat_labels(feats: Features) -> torch.Tensor:
    """Labels in feature-row order: each example's, or for token tasks the tag of every word start."""
    if not feats.per_token:
        return torch.as_tensor(feats.labels)
    return torch.as_tensor([feats.labels[i][p] for i in range(len(feats)) for p in feats.word_starts[i]])


@torch.no_grad()
def compute(model: MultiTaskModel, task: str, feats: Features, batch_size: int, max_tokens: int | None,
            memo: dict[tuple[int, ...], torch.Tensor] | None = None) -> CachedSplit:
    """Run the frozen encoder once over a split (eval mode, no gradients).

    Sentence embeddings are computed once per distinct text (its token ids, prompt included): a pair task's texts
    repeat (a hard negative serves many queries), and tasks over the same sentences share them. `memo` carries those
    already computed from split to split and task to task; it gains the ones computed here."""
    if not feats.per_token:
        return _sentences(model, task, feats, batch_size, max_tokens, {} if memo is None else memo)
    left = model.encoder.tokenizer.padding_side == "left"
    device = model.encoder.device
    rows: list[torch.Tensor] = [torch.empty(0)] * len(feats)
    with evaluating(model):
        for idx in progress(sorted_batches(feats.lengths, batch_size, max_tokens), f"Caching {task}"):
            batch = collate(model.encoder, feats, idx)
            out = model.features(task, batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu()
            for row, i in enumerate(idx):  # token tasks keep word starts only: the head is applied per word
                rows[i] = out[row, word_positions(feats, i, out.shape[1], left)]
    offsets = np.cumsum([0] + [len(r) for r in rows]).tolist()
    return CachedSplit(torch.cat(rows), flat_labels(feats), offsets)


def _sentences(model: MultiTaskModel, task: str, feats: Features, batch_size: int, max_tokens: int | None,
               memo: dict[tuple[int, ...], torch.Tensor]) -> CachedSplit:
    """Sentence embeddings (N, D), or a pair task's (N, S, D), each distinct text encoded once (see `compute`)."""
    others = feats.others or [[] for _ in feats.input_ids]
    texts = [[tuple(ids), *map(tuple, rest)] for ids, rest in zip(feats.input_ids, others, strict=True)]
    new = list(dict.fromkeys(t for row in texts for t in row if t not in memo))
    if new:
        unique = Features([list(t) for t in new], [0] * len(new))
        device = model.encoder.device
        with evaluating(model):
            for idx in progress(sorted_batches(unique.lengths, batch_size, max_tokens), f"Caching {task}"):
                batch = collate(model.encoder, unique, idx)
                out = model.features(task, batch["input_ids"].to(device), batch["attention_mask"].to(device))
                for row, embedding in zip(idx, out.float().cpu(), strict=True):
                    memo[new[row]] = embedding
    features = torch.stack([torch.stack([memo[t] for t in row]) for row in texts])
    return CachedSplit(features if feats.others else features[:, 0], flat_labels(feats))


def cached_features(model: MultiTaskModel, features: dict[str, dict[str, Features]], runtime, cache_dir: str | None,
                    batch_size: int, note: Callable[[str], None]) -> dict[str, dict[str, CachedSplit]]:
    """Every task's train and dev features from the frozen encoder, from the disk cache where an earlier stage or run
    computed them with the same weights, settings and inputs. `note` hears of each split computed."""
    from thawing.store.cache import FeatureStore, entry_key, fingerprint

    store = FeatureStore(cache_dir)
    encoder = model.encoder
    weights = fingerprint(encoder)
    settings = {
        "pooling": encoder.pooling,
        "normalize": encoder.normalize,
        "precision": runtime.precision,
        "version": 1,
    }
    out: dict[str, dict[str, CachedSplit]] = {}
    memo: dict[tuple[int, ...], torch.Tensor] = {}  # sentence embeddings by token ids, shared by every split and task
    for task, splits in features.items():
        out[task] = {}
        for split, feats in splits.items():
            if split == "test":
                continue
            inputs = [feats.input_ids, feats.word_starts] + ([feats.others] if feats.others else [])
            key = entry_key(weights, {**settings, "type": model.specs[task].type}, inputs)
            arrays = store.load(key)
            if arrays is None:
                note(f"computing frozen features for {task}/{split} ({len(feats)} examples)")
                known = len(memo)
                with runtime.autocast():
                    arrays = compute(model, task, feats, batch_size, runtime.inference_max_tokens, memo).to_arrays()
                store.save(key, arrays)
                log.info(
                    "cached %s/%s: %d examples (%d distinct texts encoded, the rest shared), %.1f MB at %s",
                    task,
                    split,
                    len(feats),
                    len(memo) - known,
                    store.size_bytes(key) / 1e6,
                    store.path(key),
                )
            out[task][split] = CachedSplit.from_arrays(arrays, feats)
    return out
