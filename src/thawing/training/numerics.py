"""The numbers of each update, kept on the device until they are read: each update's losses, gradient norm and
whether it was applied (`Update`) are read back together, in one transfer for all the updates since the last read
(`TrainingRecords.read`), every `train.log_every` updates and before each evaluation, stage checkpoint and a stage's
end. Reading them each update would make the host wait for the device every update (issue 30: on a GPU the update
then runs at the speed of the host, not of its kernels).

Non-finite updates: a non-finite loss or gradient norm marks the update on the device (`found_inf`), and its step
leaves the weights and the optimizer's state untouched (a fused AdamW takes the mark, `stepping.Replicated.step`). At
the next read, the run stops with a message naming the stage, update, step and task (`train.nonfinite: stop`, its
last checkpoint kept), or counts the skipped updates and stops past `train.nonfinite_limit` (`skip`). So a stop comes
at the next read rather than at the update itself: the updates in between ran, none of them non-finite was applied."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from thawing import distributed
from thawing.errors import NonFiniteError
from thawing.store import metric_lines
from thawing.training.updates import MicroBatch, divisors

log = logging.getLogger(__name__)


@dataclass
class Update:
    """What one update computed, on the device: the micro-batches as they ran (in smaller pieces after running out
    of GPU memory), each one's task loss (over its divisor) then the added losses (`names`: the record name of each),
    summed over the processes; the gradient norm before clipping (None without `train.grad_clip`); `found_inf`, 1.0
    where the update was not applied for a non-finite value. `update` and `step`: the stage's update and the plan's
    step it was (counted from 1)."""

    pieces: list[MicroBatch]
    losses: torch.Tensor
    names: list[str]
    norm: torch.Tensor | None
    found_inf: torch.Tensor
    update: int
    step: int


@dataclass
class Values:
    """An `Update` read back: each micro-batch's task loss, the added losses by record name, the norm, and whether
    it was left out for a non-finite value."""

    pieces: list[MicroBatch]
    task_losses: list[float]
    added: dict[str, list[float]]
    norm: float | None
    nonfinite: bool


def stacked(task_losses: list[torch.Tensor], added: dict[str, list[torch.Tensor]]) -> tuple[torch.Tensor, list[str]]:
    """An update's task losses then its added losses in one tensor, summed over the processes (each holds its slice's
    part; an all-reduce on the device, not a read), and the record name of each added one."""
    names = [name for name, parts in added.items() for _ in parts]
    values = torch.stack(task_losses + [t for parts in added.values() for t in parts]).float()
    return distributed.summed(values), names


def found_inf(losses: torch.Tensor, norm: torch.Tensor | None) -> torch.Tensor:
    """1.0 where a loss or the gradient norm is not finite, else 0.0: a 0-dim float32 on the device, what a fused
    optimizer's step takes as its skip mark. `norm` None: losses only (no clipping, or fp16, whose loss scaler
    handles non-finite gradients itself)."""
    bad = ~torch.isfinite(losses).all()
    if norm is not None:
        bad = bad | ~torch.isfinite(norm)
    return bad.float()


def read(updates: list[Update]) -> list[Values]:
    """The updates' values, in one transfer from the device."""
    if not updates:
        return []
    parts = [torch.cat([u.losses, u.found_inf.reshape(1).float(),
                        *([u.norm.reshape(1).float()] if u.norm is not None else [])]) for u in updates]
    flat = torch.cat(parts).tolist()
    out, at = [], 0
    for u in updates:
        size = len(u.pieces)
        values = flat[at : at + size + len(u.names) + 1 + (u.norm is not None)]
        at += len(values)
        added: dict[str, list[float]] = {}
        for name, value in zip(u.names, values[size : size + len(u.names)], strict=True):
            added.setdefault(name, []).append(value)
        norm = values[-1] if u.norm is not None else None
        out.append(Values(u.pieces, values[:size], added, norm, values[size + len(u.names)] > 0))
    return out


def nonfinite_update(ctx, stage, values: Values, update: int, step: int) -> None:
    """Stop the run (train.nonfinite: stop), or count the skipped update, up to train.nonfinite_limit."""
    cfg, p = ctx.prep.config.train, ctx.state.stage
    bad = [(task, loss) for (task, _), loss in zip(values.pieces, values.task_losses, strict=True)
           if not math.isfinite(loss)]
    what = f"the loss of task '{bad[0][0]}' is {bad[0][1]}" if bad else "the gradient norm is not finite"
    where = f"stage '{stage.name}', update {update} (step {step})"
    if cfg.nonfinite == "skip" and p.nonfinite < cfg.nonfinite_limit:
        p.nonfinite += 1
        log.warning("%s: %s; update skipped (%d of at most %d)", where, what, p.nonfinite, cfg.nonfinite_limit)
        return
    limit = f" after {p.nonfinite} skipped updates (train.nonfinite_limit)" if cfg.nonfinite == "skip" else ""
    kept = (f"its last checkpoint is kept in {ctx.run.checkpoints}" if ctx.run.checkpoints.is_dir()
            else "it had written no checkpoint yet")
    raise NonFiniteError(f"{where}: {what}{limit}. The run stopped; {kept}. Lower the learning rates, or set "
                         "train.nonfinite: skip")


class TrainingRecords:
    """Each task's training loss (per labelled item) and the examples seen, summed between two records; the sums live
    in the stage's progress (`StageProgress.log`), so a resumed run logs what the uninterrupted one would have. The
    updates since the last read wait on the device (`pending`) until `read`."""

    def __init__(self, sums: dict, norms: list[float], train_sets: dict, stage):
        self.sums = sums  # task -> [summed loss, labelled items, examples, micro-batches]
        self.norms = norms  # each update's gradient norm before clipping (with train.grad_clip)
        self.train_sets, self.stage = train_sets, stage
        self.pending: list[Update] = []
        self.clock = time.perf_counter()

    def add(self, update: Update) -> None:
        """One more update, its values left on the device."""
        self.pending.append(update)

    def read(self, ctx) -> dict[str, float] | None:
        """Read every pending update (one transfer), add it to the sums and handle its non-finite values (module
        docstring: may raise `NonFiniteError`); returns the last one's mean loss per task (None: nothing pending)."""
        pending, self.pending = self.pending, []
        last = None
        for update, values in zip(pending, read(pending), strict=True):
            if values.nonfinite:
                nonfinite_update(ctx, self.stage, values, update.update, update.step)
            last = self.add_values(values)
        return last

    def add_values(self, values: Values) -> dict[str, float]:
        """Add one update's values; returns its mean loss per task."""
        batches, losses, train_sets = values.pieces, values.task_losses, self.train_sets
        if values.norm is not None and math.isfinite(values.norm):
            self.norms.append(values.norm)
        for name, parts in values.added.items():  # recorded as "tasks" of their own, one value per update
            row = self.sums.setdefault(name, [0.0, 0, 0, 0])
            row[0], row[1] = row[0] + sum(parts), row[1] + 1
        sums: dict[str, list] = {}
        for (task, indices), loss, divisor in zip(batches, losses, divisors(batches, train_sets), strict=True):
            row = sums.setdefault(task, [0.0, 0, 0, 0])
            row[0] += loss * divisor  # back to the micro-batch's summed loss
            row[1] += train_sets[task].labelled(indices)
            row[2] += len(indices)
            row[3] += 1
        for task, values_ in sums.items():
            row = self.sums.setdefault(task, [0.0, 0, 0, 0])
            for i, value in enumerate(values_):
                row[i] += value
        return {task: total / max(labelled, 1) for task, (total, labelled, _, _) in sums.items()}

    def log(self, ctx, stage: str, optimizer) -> None:
        """One record per task: its mean loss since the last record, the rate of every group, examples per second
        (the caller has read the pending updates)."""
        now = time.perf_counter()
        examples = sum(row[2] for row in self.sums.values())
        rate = examples / max(now - self.clock, 1e-9)
        lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
        # one value per update, so every task's record carries the same mean
        norm = sum(self.norms) / len(self.norms) if self.norms else None
        for task, (total, labelled, _, batches) in sorted(self.sums.items()):
            # a task's micro-batches since the last record: its share of training (an added loss has none)
            ctx.log(metric_lines.training(stage, ctx.state.step, task, total / max(labelled, 1), lrs, rate,
                                          None if task.startswith("retain:") else batches, norm))
        self.sums.clear()
        self.norms.clear()
        self.clock = now


def named_params(groups: dict, trainable: list[str]) -> dict[str, torch.nn.Parameter]:
    return {name: param for g in trainable for name, param in groups[g]}
