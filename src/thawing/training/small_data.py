"""Runs whose dev split is too small to choose by (`train.small_data`).

With 48 training questions and a 10% dev carve, dev holds 5: the plateau rule stopped the `heads` stage after two
updates at dev 0.2 and the plan stopped there, far below the zero-step nearest-centroid baseline (0.614 against
0.460 test accuracy on TREC coarse, 8 per class, docs/benchmarks.md). On such runs the dev score is noise, so the
plan runs as written: no stage stops on a plateau or goes back to its best evaluation, the plan does not stop when a
stage fails to beat the last, and each stage runs at least `min_updates` updates (a few epochs of 48 examples are a
handful of steps). Linear heads start from the class centroids, so training starts at the `frozen` baseline.

Runs with dev splits of at least `min_dev` examples are untouched: this module changes nothing on them.
"""

from __future__ import annotations

import dataclasses
import logging
import math

from thawing.config import SmallDataConfig
from thawing.training.stages import Stage

log = logging.getLogger(__name__)


def smallest_dev(features: dict[str, dict]) -> int:
    """The number of examples in the smallest dev split of the run's tasks (0 when no task has one)."""
    sizes = [len(splits["dev"]) for splits in features.values() if "dev" in splits]
    return min(sizes, default=0)


def is_small(features: dict[str, dict], cfg: SmallDataConfig) -> bool:
    """True when the smallest dev split holds fewer than `cfg.min_dev` examples."""
    return smallest_dev(features) < cfg.min_dev


def adapt_plan(plan: list[Stage], cfg: SmallDataConfig) -> list[Stage]:
    """The plan's stages with no plateau stop, their last weights kept, and at least `cfg.min_updates` updates."""
    return [dataclasses.replace(stage, patience=None, restore_best=False, stops_plan=False,
                                min_updates=cfg.min_updates, centroid_start=cfg.centroid_init) for stage in plan]


def scaled_epochs(epochs: float, updates: int, min_updates: int) -> float:
    """`epochs`, raised so that the stage runs at least `min_updates` updates when `epochs` gives `updates`.

    Example:
        >>> scaled_epochs(4, 8, 50), scaled_epochs(4, 80, 50), scaled_epochs(0, 0, 50)
        (25.0, 4, 0)
    """
    if updates <= 0 or updates >= min_updates:
        return epochs
    return float(math.ceil(epochs * min_updates / updates))
