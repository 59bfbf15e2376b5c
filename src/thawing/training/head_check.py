"""Does training a centroid-started head help? Cross-validation on train, for runs whose dev split is too small to say
(training/small_data.py).

At 8 examples per class a linear head trained on 43 frozen sentence embeddings scores below the class centroids it
starts from (TREC coarse: 0.506 against 0.532 test accuracy over 3 seeds, docs/benchmarks.md): with so few examples,
the centroids (a generative classifier with one mean per class) generalize better than a discriminative fit, and
lower learning rates only bring the fit closer to them, never above. Which of the two is better depends on the data,
so it is measured, on train only: stratified k-fold, each fold's head started from its own training part's centroids
and trained as the stage would train it (its rate, weight decay, schedule, batch size and epochs), against those
centroids, on the held-out part. Ties go to the centroids: the simpler classifier, and no update is no risk.
"""

from __future__ import annotations

import copy

import torch

from thawing.config import TrainConfig
from thawing.training.features import CachedSplit
from thawing.training.paths import scale_head
from thawing.training.schedule import lr_multiplier, warmup_steps

FOLDS = 5  # fewer when a class has fewer examples; under 2 per class there is nothing to hold out


def cross_validate(head: torch.nn.Module, kind, split: CachedSplit, stage, group: str, cfg: TrainConfig) -> dict:
    """Held-out accuracy over stratified folds of `split` (a task's cached train features) of the centroid head and of
    the same head trained as `stage` trains `group`. Returns {"folds", "centroid", "trained", "train"}; "train" says
    whether training won (strictly). Token rows (one per word) are not checked: their folds would split sentences
    ("train" is then True: the stage trains as planned). The global random state is left as it was."""
    if split.offsets is not None:
        return {"folds": 0, "train": True, "reason": "token rows are not checked"}
    keep = split.labels >= 0
    features, labels = split.features[keep].float(), split.labels[keep]
    counts = torch.bincount(labels)
    folds = min(FOLDS, int(counts[counts > 0].min()))
    if folds < 2:
        return {"folds": 0, "train": True, "reason": "a class has a single example"}
    device = next(head.parameters()).device
    features, labels = features.to(device), labels.to(device)
    assignment = stratified_folds(labels.cpu(), folds, cfg.seed)
    correct = {"centroid": 0, "trained": 0}
    with torch.random.fork_rng(devices=[]):  # dropout in the fits must not move the run's own random stream
        torch.manual_seed(cfg.seed)
        for fold in range(folds):
            fit, held = assignment != fold, assignment == fold
            model = copy.deepcopy(head)
            kind.centroid_head(model, features[fit], labels[fit])
            scale_head(model, features[fit])
            correct["centroid"] += hits(model, features[held], labels[held])
            fit_head(model, kind, features[fit], labels[fit], stage, group, cfg)
            correct["trained"] += hits(model, features[held], labels[held])
    total = len(labels)
    return {"folds": folds, "centroid": round(correct["centroid"] / total, 4),
            "trained": round(correct["trained"] / total, 4), "train": correct["trained"] > correct["centroid"]}


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
def hits(head: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor) -> int:
    head.eval()
    return int((head(features).argmax(-1) == labels).sum())


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
