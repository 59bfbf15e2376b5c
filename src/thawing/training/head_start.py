"""How heads start: from their class centroids (`train.head_init`), and, on runs too small to choose by dev, only
where training them beats those centroids (cross-validation on train).

Started at random, a linear head can end below the zero-step nearest-centroid classifier it could have begun from:
on TREC fine with 1,000 training questions (about 20 per class over 47 classes), `heads` reached 0.600 test accuracy
against the centroids' 0.674 (docs/benchmarks.md). So the heads a stage is the first to train start from their
class centroids, scaled (`paths.centroid_heads`), and such a stage evaluates once before its first update: the best
evaluation it goes back to is then never below its start on dev (training/loop.py).

On small data (training/small_data.py) dev cannot choose, and a stage that trains only such heads first asks whether
training helps at all. At 8 examples per class a linear head trained on 43 frozen sentence embeddings scores below
the class centroids it starts from (TREC coarse: 0.506 against 0.532 test accuracy over 3 seeds): with so few
examples, the centroids (a generative classifier with one mean per class) generalize better than a discriminative
fit, and lower learning rates only bring the fit closer to them, never above. Which of the two is better depends on
the data, so it is measured, on train only: stratified k-fold, each fold's head started from its own training part's
centroids and trained as the stage would train it (its rate, weight decay, schedule, batch size and epochs), against
those centroids, on the held-out part. Training must win by more than one standard error of the per-example gains
(the one-standard-error rule of cross-validated model selection): at 43 held-out examples one example is 2.3 points,
and a first version that trained on any win trained on seed 0 of TREC coarse (CV 0.558 against 0.535, one example)
and lost 1.4 points of test accuracy against the centroids. Otherwise, and on ties, the centroids stay: the simpler
classifier, and no update is no risk.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import torch

from thawing.config import TrainConfig
from thawing.training.features import CachedSplit
from thawing.training.paths import CachedHeads, WholeModel, centroid_heads, scale_head
from thawing.training.schedule import lr_multiplier, warmup_steps
from thawing.training.stages import Stage

FOLDS = 5  # fewer when a class has fewer examples; under 2 per class there is nothing to hold out
# The one-standard-error rule reads the mean per-example gain as normal, which a sum of fewer than about 30 gains of
# -1, 0 or +1 is not: on SST-2 with 8 sentences per class (14 after the dev carve) two wins and no loss passed it, and
# the trained head lost 1.9 points of test accuracy against its centroids (seed 0, docs/benchmarks.md). Below this many
# labelled examples the check cannot tell, and the centroids stay.
MIN_CHECKED = 30

log = logging.getLogger(__name__)


def start_stage(path: WholeModel, stage: Stage, trained_heads: list[str], cfg: TrainConfig, resumed: bool
                ) -> tuple[Stage, list[str]]:
    """At a stage's start, with `head_init: centroids`: the linear single-label heads the stage is the first to train
    start from their class centroids, scaled (`centroid_heads`). Returns the stage to run and those heads.

    With `head_check` (small data), a stage that trains only such heads, on cached features, comes back with `epochs`
    0 when cross-validation on train finds that training does not beat the centroids for any of them
    (`path.summary["head_check"]` says what it found). A stage resumed from a checkpoint inside it has trained
    already: its heads are the checkpoint's."""
    if cfg.head_init != "centroids" or resumed:
        return stage, []
    specs = path.base.specs
    new = [t for t in specs if f"head:{t}" in stage.trainable and t not in trained_heads
           and specs[t].head.get("type") == "linear" and specs[t].kind.name != "multi-label"]
    # Single-label heads only: a multi-label head's sigmoid thresholds would not survive the scaling.
    if not new:
        return stage, []
    centroid_heads(path, new, scale=True)
    heads_only = all(g.startswith("head:") and g.removeprefix("head:") in new for g in stage.trainable)
    if not stage.head_check or not heads_only or not isinstance(path, CachedHeads) or stage.epochs == 0:
        return stage, new
    found = {t: cross_validate(path.base.heads[t], specs[t].kind, path.train_features(t), stage, f"head:{t}", cfg)
             for t in new}
    path.summary["head_check"] = found
    if any(f["train"] for f in found.values()):
        return stage, new
    log.info("stage %s: cross-validation on train prefers the centroid heads (%s): it trains nothing", stage.name,
             found)
    return dataclasses.replace(stage, epochs=0), new


def cross_validate(head: torch.nn.Module, kind, split: CachedSplit, stage, group: str, cfg: TrainConfig) -> dict:
    """Held-out accuracy over stratified folds of `split` (a task's cached train features) of the centroid head and of
    the same head trained as `stage` trains `group`. Returns {"folds", "centroid", "trained", "standard_error",
    "train"}; "train" says whether training won by more than one standard error of the per-example gains. Token rows
    (one per word) are not checked: their folds would split sentences ("train" is then True: the stage trains as
    planned). Under `MIN_CHECKED` examples nothing is fitted and "train" is False. The global random state is left as
    it was."""
    if split.offsets is not None:
        return {"folds": 0, "train": True, "reason": "token rows are not checked"}
    keep = split.labels >= 0
    if int(keep.sum()) < MIN_CHECKED:
        return {"folds": 0, "train": False, "reason": f"{int(keep.sum())} examples: too few to tell (< {MIN_CHECKED})"}
    features, labels = split.features[keep].float(), split.labels[keep]
    counts = torch.bincount(labels)
    folds = min(FOLDS, int(counts[counts > 0].min()))
    if folds < 2:
        return {"folds": 0, "train": True, "reason": "a class has a single example"}
    device = next(head.parameters()).device
    features, labels = features.to(device), labels.to(device)
    assignment = stratified_folds(labels.cpu(), folds, cfg.seed).to(device)
    right = {"centroid": torch.zeros(len(labels), dtype=torch.bool, device=device)}
    right["trained"] = right["centroid"].clone()
    # Dropout in the fits must not move the run's own random streams (the CPU's, and the GPU's the head is on).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        for fold in range(folds):
            fit, held = assignment != fold, assignment == fold
            model = copy.deepcopy(head)
            kind.centroid_head(model, features[fit], labels[fit])
            scale_head(model, features[fit])
            right["centroid"][held] = hits(model, features[held], labels[held])
            fit_head(model, kind, features[fit], labels[fit], stage, group, cfg)
            right["trained"][held] = hits(model, features[held], labels[held])
    return {"folds": folds, **compare(right["trained"], right["centroid"])}


def compare(trained: torch.Tensor, centroid: torch.Tensor) -> dict:
    """Held-out accuracies of the two heads (bool per example: right or not) and whether the trained one wins by more
    than one standard error of the per-example gains.

    Example:
        >>> one = torch.tensor([True] + [False] * 42)   # a single gain, no loss: exactly one standard error
        >>> compare(one, torch.zeros(43, dtype=torch.bool))["train"]
        False
    """
    gains = trained.double() - centroid.double()  # per example: +1, 0 or -1
    error = float(gains.std() / len(gains) ** 0.5)
    # A single gain and no loss gives a mean of exactly one standard error (1/n): not more, whatever the rounding.
    return {"centroid": round(float(centroid.double().mean()), 4), "trained": round(float(trained.double().mean()), 4),
            "standard_error": round(error, 4), "train": float(gains.mean()) - error > 1e-9}


def stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """A fold id per example: each class's examples, in a seeded random order, dealt out in turn, so every fold holds
    each class's share (within one example).

    Example:
        >>> stratified_folds(torch.tensor([0, 0, 1, 1, 1, 0]), 2, 0).bincount().tolist()
        [3, 3]
    """
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(len(labels), dtype=torch.long)
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        out[members] = torch.arange(len(members)) % folds
    return out


@torch.no_grad()
def hits(head: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether the head gets each example right (bool per row)."""
    head.eval()
    return head(features).argmax(-1) == labels


def fit_head(head: torch.nn.Module, kind, features: torch.Tensor, labels: torch.Tensor, stage, group: str,
             cfg: TrainConfig) -> None:
    """Train `head` as the stage would: AdamW at the group's rate and the run's weight decay, batches of
    `train.batch_size` in a random order each epoch, the stage's epochs, warm-up, schedule and gradient clipping."""
    head.train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=stage.lrs[group], weight_decay=cfg.weight_decay)
    per_epoch = -(-len(labels) // cfg.batch_size)
    total = max(1, round(stage.epochs * per_epoch))
    warm = warmup_steps(stage.warmup, total)
    batches: list[torch.Tensor] = []
    for step in range(total):
        if not batches:
            batches = list(torch.randperm(len(labels), device=labels.device).split(cfg.batch_size))
        rows = batches.pop(0)
        for param_group in optimizer.param_groups:
            param_group["lr"] = stage.lrs[group] * lr_multiplier(step, total, warm, stage.lr_schedule)
        loss = kind.loss(head(features[rows]), labels[rows], None)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
