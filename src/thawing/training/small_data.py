"""Runs whose dev split is too small to choose by (`train.small_data`).

With 48 training questions and a 10% dev carve, dev holds 5: the plateau rule stopped the `heads` stage after two
updates at dev 0.2 and the plan stopped there, far below the zero-step nearest-centroid baseline (0.614 against
0.460 test accuracy on TREC coarse, 8 per class, docs/benchmarks.md). On such runs the dev score is noise, so:

- `adapt_plan` (once, before the first stage; a pure function of the data sizes and the settings): no stage stops on a
  plateau or goes back to its best evaluation, the plan does not stop when a stage fails to beat the last, and each
  stage's epochs are raised (whole epochs) until it runs at least `min_updates` updates;
- `start_stage` (at each stage's start): heads that no stage has trained yet start from their class centroids (the
  `frozen` baseline), scaled, rather than at random (`centroid_init`); and a stage that trains nothing but such heads
  trains them only where cross-validation on train says that training beats the centroids (training/head_check.py).
  Otherwise the stage trains nothing, and the run keeps the zero-step centroid heads, as `frozen` does.

Runs whose dev splits all have at least `min_dev` examples are untouched: `adapt_plan` returns their plan as it is,
and `start_stage` does nothing for a stage without `centroid_start`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Mapping

from thawing.config import TrainConfig
from thawing.data.batching import Features
from thawing.freezing import active_tasks
from thawing.training import head_check
from thawing.training.paths import CachedHeads, WholeModel, centroid_heads
from thawing.training.stages import Stage
from thawing.training.updates import StagePlan

log = logging.getLogger(__name__)


def smallest_dev(features: Mapping[str, Mapping[str, Features]]) -> int:
    """The number of examples in the smallest dev split of the run's tasks (0 when no task has one)."""
    return min((len(splits["dev"]) for splits in features.values() if "dev" in splits), default=0)


def is_small(features: Mapping[str, Mapping[str, Features]], cfg: TrainConfig) -> bool:
    """True when the smallest dev split holds fewer than `train.small_data.min_dev` examples."""
    return smallest_dev(features) < cfg.small_data.min_dev


def adapt_plan(plan: list[Stage], features: Mapping[str, Mapping[str, Features]], specs: Mapping, cfg: TrainConfig,
               packing: bool = False) -> list[Stage]:
    """The plan to run: `plan` itself when dev is large enough; else its stages with no plateau stop, their last
    weights kept, the plan never stopped, at least `min_updates` updates each, and centroid starts (`centroid_init`).

    `packing`: whether the run may step packed batches (the runtime's packing); the update count is then taken as the
    smaller of the packed and padded plans, so either way the stage runs at least `min_updates`.
    """
    if not is_small(features, cfg):
        return plan
    small = cfg.small_data
    log.warning("the smallest dev split has %d examples (< train.small_data.min_dev %d): dev cannot choose, so stages "
                "run their epochs (at least %d updates) without plateau stops or best-epoch selection",
                smallest_dev(features), small.min_dev, small.min_updates)
    out = []
    for stage in plan:
        train = {t: features[t]["train"] for t in active_tasks(specs, stage.trainable)}
        epochs = scaled_epochs(stage, train, cfg, packing)
        out.append(dataclasses.replace(stage, epochs=epochs, patience=None, restore_best=False, stops_plan=False,
                                       centroid_start=small.centroid_init))
    return out


def scaled_epochs(stage: Stage, train: Mapping[str, Features], cfg: TrainConfig, packing: bool) -> float:
    """The stage's epochs, raised to whole epochs until it runs at least `min_updates` updates (unchanged when it
    already does, or trains nothing)."""
    if not train or stage.epochs == 0 or not stage.trainable:
        return stage.epochs
    updates = min(StagePlan.build(train, cfg, stage.name, stage.epochs, packed).updates
                  for packed in {False, packing})
    return raised_epochs(stage.epochs, updates, cfg.small_data.min_updates)


def raised_epochs(epochs: float, updates: int, min_updates: int) -> float:
    """`epochs`, raised so that the stage runs at least `min_updates` updates when `epochs` gives `updates`.

    Example:
        >>> raised_epochs(4, 8, 50), raised_epochs(4, 80, 50), raised_epochs(0, 0, 50)
        (25.0, 4, 0)
    """
    if updates <= 0 or updates >= min_updates:
        return epochs
    return float(math.ceil(epochs * min_updates / updates))


def start_stage(path: WholeModel, stage: Stage, trained_heads: list[str], cfg: TrainConfig, resumed: bool) -> Stage:
    """At a stage's start, for stages with `centroid_start` (else `stage` as it is): the linear single-label heads the
    stage is the first to train start from their class centroids, scaled (`centroid_heads`). A stage that trains only
    such heads, on cached features, comes back with `epochs` 0 when cross-validation on train finds that training does
    not beat the centroids for any of them (`path.summary["head_check"]` says what it found). A stage resumed from a
    checkpoint inside it has trained already: its heads are the checkpoint's."""
    if not stage.centroid_start or resumed:
        return stage
    specs = path.base.specs
    new = [t for t in specs if f"head:{t}" in stage.trainable and t not in trained_heads
           and specs[t].head.get("type") == "linear" and specs[t].kind.name != "multi-label"]
    # Single-label heads only: a multi-label head's sigmoid thresholds would not survive the scaling.
    if not new:
        return stage
    centroid_heads(path, new, scale=True)
    heads_only = all(g.startswith("head:") and g.removeprefix("head:") in new for g in stage.trainable)
    if not heads_only or not isinstance(path, CachedHeads) or stage.epochs == 0:
        return stage
    found = {t: head_check.cross_validate(path.base.heads[t], specs[t].kind, path.train_features(t), stage,
                                          f"head:{t}", cfg) for t in new}
    path.summary["head_check"] = found
    if any(f["train"] for f in found.values()):
        return stage
    log.info("stage %s: cross-validation on train prefers the centroid heads (%s): it trains nothing", stage.name,
             found)
    return dataclasses.replace(stage, epochs=0)
