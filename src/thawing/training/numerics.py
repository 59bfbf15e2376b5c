"""The numbers of each update: non-finite losses and gradients are caught before the optimizer steps (by default the
run stops with a message naming the stage, step and task, its last checkpoint kept; `train.nonfinite: skip` skips
such updates, up to `train.nonfinite_limit`), and each task's training loss is logged every `train.log_every`
updates."""

from __future__ import annotations

import logging
import math
import time

import torch

from thawing import distributed
from thawing.errors import NonFiniteError
from thawing.store import metric_lines
from thawing.training.updates import divisors

log = logging.getLogger(__name__)


def finite(losses: list[float], norm: torch.Tensor | None, scaled: bool) -> bool:
    """Whether an update's micro-batch losses, and its gradient norm, are finite. Under a loss scaler (fp16) a
    non-finite gradient is the scaler's to handle: it skips the step and lowers the scale."""
    return all(map(math.isfinite, losses)) and (norm is None or scaled or math.isfinite(float(norm)))


def nonfinite_update(ctx, stage, batches: list, losses: list[float]) -> None:
    """Stop the run (train.nonfinite: stop), or skip the update and count it, up to train.nonfinite_limit."""
    cfg, p = ctx.prep.config.train, ctx.state.stage
    bad = [(task, loss) for (task, _), loss in zip(batches, losses, strict=True) if not math.isfinite(loss)]
    what = f"the loss of task '{bad[0][0]}' is {bad[0][1]}" if bad else "the gradient norm is not finite"
    where = f"stage '{stage.name}', update {p.update + 1} (step {ctx.state.step + 1})"
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
    in the stage's progress (`StageProgress.log`), so a resumed run logs what the uninterrupted one would have."""

    def __init__(self, sums: dict, norms: list[float]):
        self.sums = sums  # task -> [summed loss, labelled items, examples, micro-batches]
        self.norms = norms  # each update's gradient norm before clipping (with train.grad_clip)
        self.clock = time.perf_counter()

    def add(self, update, train_sets: dict) -> dict[str, float]:
        """Add one update (`update.Update`: each micro-batch's task loss, divided by its divisor, the added losses by
        name, and the gradient norm that clipping saw); returns the update's mean loss per task."""
        batches, losses = update.pieces, update.task_losses
        if update.norm is not None and math.isfinite(update.norm):
            self.norms.append(update.norm)
        for name, parts in update.added.items():  # recorded as "tasks" of their own, one value per update
            row = self.sums.setdefault(name, [0.0, 0, 0, 0])
            row[0], row[1] = row[0] + sum(parts), row[1] + 1
        sums: dict[str, list] = {}
        for (task, indices), loss, divisor in zip(batches, losses, divisors(batches, train_sets), strict=True):
            row = sums.setdefault(task, [0.0, 0, 0, 0])
            row[0] += loss * divisor  # back to the micro-batch's summed loss
            row[1] += train_sets[task].labelled(indices)
            row[2] += len(indices)
            row[3] += 1
        for task, values in sums.items():
            row = self.sums.setdefault(task, [0.0, 0, 0, 0])
            for i, value in enumerate(values):
                row[i] += value
        return {task: total / max(labelled, 1) for task, (total, labelled, _, _) in sums.items()}

    def log(self, ctx, stage: str, optimizer) -> None:
        """One record per task: its mean loss since the last record, the rate of every group, examples per second."""
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


def read_losses(losses: list[torch.Tensor], added: dict[str, list]) -> tuple[list[float], dict[str, list[float]]]:
    """The update's micro-batch task losses and its added losses (by record name), read back in one transfer and
    summed over the processes (each holds its slice's part). Each is recorded as computed: the task losses hold no
    embedding loss (`update.micro_losses` keeps them apart)."""
    names = [name for name, parts in added.items() for _ in parts]
    values = distributed.summed(torch.stack(losses + [t for parts in added.values() for t in parts]).float()).tolist()
    out: dict[str, list[float]] = {}
    for name, value in zip(names, values[len(losses) :], strict=True):
        out.setdefault(name, []).append(value)
    return values[: len(losses)], out
