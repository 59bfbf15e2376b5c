"""Update planning, a pure function of the data sizes, the settings and the seed: which micro-batches each optimizer
update of a stage is made of, and what each micro-batch's summed loss is divided by.

An epoch's micro-batches are drawn per task (a count of examples, or filled to a token budget), put in the order
the sampling strategy gives, and grouped into updates: `grad_accum` at a time, or until `update_tokens` real tokens.
Within an update a task's items are averaged together whatever its batches' sizes, and each task weighs by its
share of the update's micro-batches (`divisors`). The stage's update count, which the learning-rate schedule needs,
comes from epoch 0's plan (`StagePlan.updates`); later epochs may group a little differently, and an overrun holds
the schedule's last rate.
"""

from __future__ import annotations

import itertools
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from thawing.config import TrainConfig
from thawing.data.batching import (
    Features,
    length_grouped_batches,
    packed_batches,
    separate_keys,
    token_budget_batches,
)
from thawing.data.sampling import task_order

MicroBatch = tuple[str, list[int]]  # (task, example indices)


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    """The seed of one stage's epoch: the run's seed, the stage and the epoch (crc32: `hash()` of a str varies per
    process)."""
    return zlib.crc32(f"{seed}/{stage}/{epoch}".encode())


def epoch_batches(
    train: Mapping[str, Features], cfg: TrainConfig, seed: int, packed: bool
) -> dict[str, list[list[int]]]:
    """Each task's batches for one epoch: `batch_size` examples, or filled to `max_tokens`: real tokens when the
    batches run packed (no padding to count), padded tokens (count x longest) otherwise. A task whose examples have
    keys (retrieval: the positive) never holds one key twice in a batch (`separate_keys`)."""
    if cfg.max_tokens and packed:
        out = {t: packed_batches(f.lengths, cfg.max_tokens, seed + i) for i, (t, f) in enumerate(train.items())}
    elif cfg.max_tokens:
        out = {t: token_budget_batches(f.lengths, cfg.max_tokens, seed + i) for i, (t, f) in enumerate(train.items())}
    else:
        out = {t: length_grouped_batches(f.lengths, cfg.batch_size, seed + i) for i, (t, f) in enumerate(train.items())}
    return {t: separate_keys(b, train[t].keys) if train[t].keys else b for t, b in out.items()}


def epoch_micro_batches(
    train: Mapping[str, Features], cfg: TrainConfig, stage: str, epoch: int, packed: bool = False
) -> list[MicroBatch]:
    """One epoch's micro-batches in sampled task order."""
    seed = epoch_seed(cfg.seed, stage, epoch)
    batches = epoch_batches(train, cfg, seed, packed)
    order = task_order({t: len(b) for t, b in batches.items()}, cfg.sampling.strategy, cfg.sampling.temperature, seed)
    # round_robin and temperature may draw a task more often than it has batches: it starts over.
    queues = {t: itertools.cycle(b) for t, b in batches.items()}
    return [(task, next(queues[task])) for task in order]


def group_updates(
    micro: Sequence[MicroBatch], train: Mapping[str, Features], grad_accum: int = 1, update_tokens: int | None = None
) -> list[list[MicroBatch]]:
    """Consecutive micro-batches per optimizer update: `grad_accum` of them, or, with `update_tokens`, as many as it
    takes to reach that many real tokens (the last update may fall short)."""
    if not update_tokens:
        return [list(micro[i : i + grad_accum]) for i in range(0, len(micro), grad_accum)]
    updates: list[list[MicroBatch]] = []
    current: list[MicroBatch] = []
    tokens = 0
    for task, indices in micro:
        current.append((task, indices))
        tokens += sum(len(train[task].input_ids[i]) for i in indices)
        if tokens >= update_tokens:
            updates.append(current)
            current, tokens = [], 0
    return updates + [current] if current else updates


def divisors(update: Sequence[MicroBatch], train: Mapping[str, Features]) -> list[float]:
    """What each micro-batch's summed loss is divided by: a task's labelled items in the update are averaged together,
    and the task weighs by its share of the update's micro-batches."""
    labelled: Counter = Counter()
    count: Counter = Counter()
    for task, indices in update:
        labelled[task] += train[task].labelled(indices)
        count[task] += 1
    # max(): a batch with no labelled item has a zero sum; any divisor keeps it zero, not NaN.
    return [max(labelled[task], 1) / count[task] * len(update) for task, _ in update]


@dataclass
class StagePlan:
    """A stage's updates, epoch by epoch: `epochs` may be fractional, and then the last epoch ends with whole updates.

    Example:
        >>> plan = StagePlan.build(train, cfg, "top", epochs=2)        # doctest: +SKIP
        >>> plan.updates, plan.per_epoch                               # doctest: +SKIP
        (64, 64)
    """

    train: Mapping[str, Features]
    cfg: TrainConfig
    stage: str
    packed: bool
    first: list[MicroBatch]  # epoch 0's micro-batches (the update estimate is read from them)
    micro_total: int  # micro-batches over the whole stage
    updates: int  # the stage's update count, for the learning-rate schedule

    @classmethod
    def build(
        cls, train: Mapping[str, Features], cfg: TrainConfig, stage: str, epochs: float, packed: bool = False
    ) -> StagePlan:
        first = epoch_micro_batches(train, cfg, stage, 0, packed)
        micro_total = max(1, round(epochs * len(first)))
        full, rest = divmod(micro_total, len(first))
        group = lambda micro: group_updates(micro, train, cfg.grad_accum, cfg.update_tokens)  # noqa: E731
        updates = full * len(group(first)) + (len(group(first[:rest])) if rest else 0)
        return cls(train, cfg, stage, packed, first, micro_total, updates)

    @property
    def per_epoch(self) -> int:
        """Micro-batches in one epoch (epoch 0's count)."""
        return len(self.first)

    def epoch(self, epoch: int, micro_done: int) -> list[list[MicroBatch]]:
        """The updates of `epoch`, given the micro-batches the stage has run so far: those left, grouped."""
        micro = self.first if epoch == 0 else epoch_micro_batches(self.train, self.cfg, self.stage, epoch, self.packed)
        return group_updates(
            micro[: self.micro_total - micro_done], self.train, self.cfg.grad_accum, self.cfg.update_tokens
        )
