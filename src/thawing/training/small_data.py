"""Runs whose dev split is too small to choose by (`train.small_data`).

With 48 training questions and a 10% dev carve, dev holds 5: the plateau rule stopped the `heads` stage after two
updates at dev 0.2 and the plan stopped there, far below the zero-step nearest-centroid baseline (0.614 against
0.460 test accuracy on TREC coarse, 8 per class, docs/benchmarks.md). On such runs the dev score is noise, so:

- `adapt_plan` (once, before the first stage; a pure function of the data sizes and the settings): no stage stops on a
  plateau or goes back to its best evaluation, the plan does not stop when a stage fails to beat the last, and each
  stage's epochs are raised (whole epochs) until it runs at least `min_updates` updates;
- and marks each stage `head_check`: a stage that trains nothing but centroid-started heads (`train.head_init`) trains
  them only where cross-validation on train says that training beats the centroids (training/head_start.py).
  Otherwise the stage trains nothing, and the run keeps the zero-step centroid heads, as `frozen` does.

Runs whose dev splits all have at least `min_dev` examples are untouched: `adapt_plan` returns their plan as it is.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping

from thawing.config import TrainConfig
from thawing.data.batching import Features
from thawing.model.freezing import active_tasks
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
    weights kept, the plan never stopped, at least `min_updates` updates each, and the check of centroid-started heads.

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
                                       head_check=True))
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
