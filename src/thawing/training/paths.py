"""How a stage computes: each stage chooses its forward path once, and the update only calls
`path.forward_loss(model, task, indices, divisor, embed)` (a micro-batch's task loss, and its sentence embeddings
where a stage's loss reads them; nothing is kept on the path) and evaluation `path.logits(task, split)`.

    CachedHeads   the encoder is frozen: heads read features computed once (`training/features.py`)
    TopLayers     the bottom layers are frozen: the states entering the lowest trainable layer are computed once
                  (`training/boundary_cache.py`) and only the layers above run
    WholeModel    everything runs on every step

`choose_path` picks the cheapest that gives the same losses and gradients as the whole model, and says why when it
cannot use a cache. Every path calls the model it is given through its one `forward`, so a wrapper (accelerate's)
sees each step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from thawing.data.batching import Features, collate, to_device
from thawing.distributed import agree, built_once
from thawing.model.encoder import evaluating
from thawing.model.freezing import encoder_frozen
from thawing.model.inference import task_logits
from thawing.model.multitask import MultiTaskModel
from thawing.training import boundary_cache
from thawing.training.features import CachedSplit, cached_features, compute

log = logging.getLogger(__name__)

# Centroid heads that go on to train start with logits about this far apart: a cosine classifier's usual scale (a
# softmax temperature of 0.05), see `centroid_heads`.
CENTROID_SCALE = 20.0


class Step(NamedTuple):
    """A micro-batch's forward pass in training: the task's loss (summed over its items, over the divisor), and the
    sentence embeddings and labels for the losses a stage adds on them (training/update.py), where asked for."""

    loss: torch.Tensor
    embeddings: torch.Tensor | None
    labels: torch.Tensor


@dataclass
class WholeModel:
    """Every step runs the whole model on padded token ids."""

    base: MultiTaskModel  # the model itself: specs, encoder, heads (training's forward passes run through the model
    # the update steps, which accelerate may wrap or FSDP shard: it is given to `forward_loss`)
    features: dict[str, dict[str, Features]]
    runtime: object
    batch_size: int
    cached: bool = False
    summary: dict = field(default_factory=dict)

    def forward_loss(self, model, task: str, indices: list[int], divisor: float | None = None, embed: bool = False
                     ) -> Step:
        """The micro-batch's task loss through `model` (its items' mean, or their sum over `divisor`); with `embed`,
        its pooled sentence embeddings too (only where a loss reads them: pooling costs a pass over the states)."""
        batch = collate(self.base.encoder, self.features[task]["train"], indices)
        device = self.base.encoder.device
        with self.runtime.autocast():
            out = self.forward(model, task, indices, batch, device, embed=embed)
        logits, embeddings = out if embed else (out, None)
        labels = to_device(batch["labels"], device)
        return Step(self.base.loss(task, logits, labels, divisor), embeddings, labels)

    def loss(self, task: str, indices: list[int], divisor: float | None = None) -> torch.Tensor:
        """The micro-batch's task loss through the model itself."""
        return self.forward_loss(self.base, task, indices, divisor).loss

    # `indices`: the top-layers path reads its cached states by them; the whole model runs on the batch alone.
    def forward(self, model, task: str, indices: list[int], batch: dict, device, embed: bool = False):
        lengths = [len(self.features[task]["train"].input_ids[i]) for i in indices]  # known here, not on the device
        return model(task, to_device(batch["input_ids"], device), to_device(batch["attention_mask"], device),
                     embed=embed, lengths=lengths)

    @property
    def packs(self) -> bool:
        """Whether training steps run packed (the encoder's layout): then a token budget counts real tokens and its
        batches are drawn at random; padded steps get length-grouped batches of padded tokens instead."""
        return self.runtime.packing is not None

    def logits(self, task: str, split: str) -> list[np.ndarray]:
        with self.runtime.autocast():
            return task_logits(self.base, task, self.features[task][split], self.batch_size,
                               self.runtime.inference_max_tokens)


@dataclass
class TopLayers(WholeModel):
    """Only the layers from `first` up run; what enters layer `first` is read from the boundary cache."""

    boundary: dict[str, boundary_cache.BoundaryCache] = field(default_factory=dict)

    def forward(self, model, task: str, indices: list[int], batch: dict, device, embed: bool = False):
        mask = to_device(batch["attention_mask"], device)
        cache = self.boundary[task]
        lengths = [len(self.features[task]["train"].input_ids[i]) for i in indices]
        return model(task, attention_mask=mask, hidden=cache.batch(indices, mask.shape[1], device),
                     first_layer=cache.first, embed=embed, lengths=lengths)

    @property
    def packs(self) -> bool:
        # The top layers run padded on the cached states: random batches of real tokens would be mostly padding
        # (on an H100, top-3 ran at 2.6% MFU that way, slower than full fine-tuning).
        return False


@dataclass
class CachedHeads(WholeModel):
    """The encoder is frozen: every step runs a head on features computed once."""

    cache: dict[str, dict[str, CachedSplit]] = field(default_factory=dict)
    cached: bool = True

    def forward_loss(self, model, task: str, indices: list[int], divisor: float | None = None,
                     embed: bool = False) -> Step:  # noqa: ARG002 (the paths' interface)
        # The encoder is frozen: no embedding loss has a gradient to give (nothing is pooled here, whatever `embed`).
        features, labels = self.cache[task]["train"].batch(indices, self.base.encoder.device)
        with self.runtime.autocast():
            logits = model(task, features=features)
        return Step(self.base.loss(task, logits, labels, divisor), None, labels)

    def logits(self, task: str, split: str) -> list[np.ndarray]:
        if split not in self.cache[task]:  # test: never cached
            return super().logits(task, split)
        cached = self.cache[task][split]
        head = self.base.heads[task]
        with torch.no_grad(), evaluating(head), self.runtime.autocast():
            values = head(cached.features.to(self.base.encoder.device)).float().cpu().numpy()
        return cached.split_rows(values)

    def train_features(self, task: str) -> CachedSplit:
        return self.cache[task]["train"]

    @property
    def packs(self) -> bool:
        return False  # no tokens run: a budget counts padded tokens, as without packing


def choose_path(base: MultiTaskModel, trainable: list[str], features: dict[str, dict[str, Features]],
                runtime, cfg, active: list[str], note: Callable[[str], None]) -> WholeModel:
    """The stage's forward path: cached heads when the encoder is frozen, cached bottom layers when only top layers
    train (and the model splits there), else the whole model. `cfg` is the run config (cache and batch settings)."""
    common = dict(base=base, features=features, runtime=runtime, batch_size=cfg.train.eval_batch_size)
    if cfg.cache.enabled is not False and encoder_frozen(trainable):
        with built_once():  # several processes: the main one computes and stores the features, the others read them
            cache = cached_features(base, features, runtime, cfg.cache.dir, cfg.train.eval_batch_size, note)
        size = sum(s.features.numel() * s.features.element_size() for splits in cache.values() for s in splits.values())
        return CachedHeads(**common, cache=cache, summary={"feature_cache_mb": round(size / 1e6, 2)})
    first = boundary_cache.first_trainable_layer(trainable)
    if first is None or cfg.cache.enabled is False:
        return WholeModel(**common)
    if any(base.specs[t].kind.reads == "pairs" for t in active):  # the cache holds one text per example
        note("no boundary cache: a pair task runs the whole model (its examples hold several texts)")
        return WholeModel(**common)
    feats = [features[t]["train"] for t in active]
    dtype = boundary_cache.cache_dtype(cfg.cache.dtype, base.encoder.device)
    need = boundary_cache.estimate_bytes(feats, base.encoder.hidden_size, dtype)
    if need > cfg.cache.max_gb * 1e9:
        reason = f"it would need {need / 1e9:.2f} GB > cache.max_gb {cfg.cache.max_gb}"
    else:
        reason = boundary_cache.usable(base.encoder, first, feats[0])  # fp32: does the forward split, not precision
        reason = agree(reason)  # a measured difference: every process takes the main one's verdict
    if reason:
        message = f"no boundary cache, the stage runs the whole model padded: {reason}"
        log.warning(message)
        note(message)
        return WholeModel(**common)
    with runtime.autocast():  # the cache holds what training's own (autocast) forward would compute
        built = {t: boundary_cache.build(base.encoder, first, f, cfg.train.eval_batch_size, dtype,
                                         runtime.inference_max_tokens) for t, f in zip(active, feats, strict=True)}
    size = sum(b.nbytes for b in built.values())
    note(f"boundary cache at layers.{first}: {sum(len(f) for f in feats)} examples, {size / 1e6:.1f} MB "
                     f"{str(dtype).replace('torch.', '')} (estimate {need / 1e6:.1f} MB); the top layers run padded")
    path = TopLayers(**common, boundary=built)
    path.summary = {"boundary_cache": f"layers.{first}", "boundary_cache_mb": round(size / 1e6, 1)}
    return path


def centroid_heads(path: WholeModel, untrained: list[str], scale: bool = False) -> None:
    """Heads that no stage has trained become the task type's zero-step classifier (nearest centroids).

    `scale`: multiply each head's weights and bias so that its logits spread over about `CENTROID_SCALE` (the same
    ranking, a sharper softmax), for heads that go on to train. Unscaled, the logits of unit-length embeddings differ
    by a few hundredths and a weight is about 1/sqrt(D) (0.05 for MiniLM): Adam moves every weight by about the
    learning rate (3e-2) per update whatever the gradient, so the first updates overwrite the centroids. Scaled, an
    update changes a weight by a few percent, and training starts from the centroids rather than from noise."""
    base = path.base
    for task in untrained:
        if isinstance(path, CachedHeads):
            train = path.train_features(task)
        else:
            with path.runtime.autocast():
                train = compute(base, task, path.features[task]["train"], path.batch_size,
                                path.runtime.inference_max_tokens)
        spec = base.specs[task]
        spec.head["type"] = "linear"  # centroids live in a linear head (see centroid_init)
        device = base.encoder.device
        spec.kind.centroid_head(base.heads[task], train.features.to(device), train.labels.to(device))
        if scale:
            scale_head(base.heads[task], train.features)


@torch.no_grad()
def scale_head(head, features: torch.Tensor) -> None:
    """Multiply a centroid head's output layer so that its logits spread over about `CENTROID_SCALE`: the same ranking
    of classes, a sharper softmax. Logits are |x||c| apart at most, hence the features' mean squared norm."""
    last = head.net[-1]
    factor = CENTROID_SCALE / features.float().pow(2).sum(-1).mean().clamp(min=1e-6).item()
    last.weight.mul_(factor)
    last.bias.mul_(factor)
