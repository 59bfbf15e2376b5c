"""One optimizer update, readable top to bottom in `one_update`: its micro-batches' forward and backward passes (each
task loss plus the stage's embedding losses), the L2-SP penalty, the rates, clipping, the non-finite guard and the
step. It returns what it computed (`Update`); nothing is left on the forward path for anyone to read later.

The embedding losses a stage adds on the micro-batch's sentence embeddings, by the name the records give them:
    retain:distill   anchoring to the pretrained encoder (training/retain.py), on every task's texts
    pairs:cosine     a classification task's SetFit pair loss (`pair_loss`, training/pairs.py)
    retain:l2sp      (once per update, on the weights) the squared distance from the pretrained weights
They are recorded apart from the task losses, which hold only the task's own loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from thawing import distributed
from thawing.config import RetainConfig
from thawing.training import memory
from thawing.training.numerics import Update, found_inf, stacked
from thawing.training.pairs import pair_loss
from thawing.training.retain import distill_loss, distills, l2sp_loss
from thawing.training.stages import pair_weights
from thawing.training.updates import MicroBatch, divisors


@dataclass(frozen=True)
class StageLosses:
    """What a stage trains by besides its tasks' losses, decided once per stage (`stage_losses`)."""

    distill: RetainConfig | None = None  # the stage's `retain` settings where they distill, else None
    pairs: dict[str, float] = field(default_factory=dict)  # task -> its pair-loss weight
    task_loss: bool = True  # false: the tasks' own losses are left out (the stage trains by the others alone)
    embedding_tasks: frozenset[str] = frozenset()  # the tasks whose forward pools sentence embeddings for them


def stage_losses(stage, config) -> StageLosses:
    """The stage's embedding losses: distillation where its `retain` distills (every task), pair losses for the
    tasks that have a pair-loss weight in the stage (`stages.pair_weights`)."""
    pairs = pair_weights(stage, config)
    pooled = set(config.tasks) if distills(stage.retain) else set()
    return StageLosses(stage.retain if distills(stage.retain) else None, pairs, stage.task_loss,
                       frozenset(pooled | set(pairs)))


def micro_losses(ctx, path, stepping, losses: StageLosses, task: str, indices: list[int], divisor: float, share: float
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch: the loss to run backward on (the task's loss over `divisor` plus `share`, the micro-batch's
    part of the update, of each embedding loss, each a mean over the micro-batch), the task loss alone and each
    embedding loss (detached)."""
    step = path.forward_loss(stepping.model, task, indices, divisor, embed=task in losses.embedding_tasks)
    task_loss = step.loss if losses.task_loss else step.loss * 0.0  # zero, yet every group takes part in the step
    added: dict[str, torch.Tensor] = {}
    if step.embeddings is not None:
        found = {"retain:distill": distill_loss(losses.distill, ctx.pretrained, task, indices, step.embeddings),
                 "pairs:cosine": pair_loss(losses.pairs.get(task, 0.0), step.embeddings, step.labels)}
        added = {name: value for name, value in found.items() if value is not None}
    total = task_loss
    for value in added.values():
        total = total + share * value
    return total, task_loss.detach(), {name: value.detach() for name, value in added.items()}


def micro_backward(ctx, path, stepping, losses: StageLosses, task: str, indices: list[int], divisor: float,
                   count: int, last: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch of an update (`count` micro-batches; `last`: its last): forward, backward; returns its task
    loss and its embedding losses as the update's records add them up over the processes (`distributed.summed`).

    With several processes each takes its slice of the micro-batch. Its task loss is its slice's sum over the whole
    micro-batch's `divisor`, and each embedding loss (a mean over its slice) its share of the micro-batch's, so the
    processes' losses add up to the one-process loss; the backward multiplies by the number of processes, whose
    gradients DDP and FSDP average. A process whose slice is empty (fewer items than processes) runs one item at
    weight 0: every process must take part in each gradient reduction."""
    processes = distributed.size()
    if processes == 1:
        total, task_loss, added = micro_losses(ctx, path, stepping, losses, task, indices, divisor, 1 / count)
        ctx.accelerator.backward(total)
        return task_loss, {name: value / count for name, value in added.items()}
    mine = distributed.shard(indices)
    weight = len(mine) / len(indices)
    with stepping.sync(last):
        total, task_loss, added = micro_losses(ctx, path, stepping, losses, task, mine or indices[:1], divisor,
                                               weight / count)
        ctx.accelerator.backward(total * (processes if mine else 0.0))
    return task_loss * (1.0 if mine else 0.0), {name: value * (weight / count) for name, value in added.items()}


def backward_all(ctx, path, stepping, losses: StageLosses, batches: list[MicroBatch], train_sets: dict, name: str
                 ) -> tuple[list[MicroBatch], list[torch.Tensor], dict[str, list[torch.Tensor]]]:
    """Every micro-batch's backward pass, each loss divided so that the update averages its items; out of GPU memory,
    the same update again in smaller pieces (training/memory.py). Returns the pieces that ran, their task losses and
    the embedding losses by name (tensors: read back once, by the caller)."""
    p = ctx.state.stage
    while True:
        pieces, task_losses = memory.split(batches, p.split), []
        added: dict[str, list[torch.Tensor]] = {}
        try:
            for i, ((task, indices), divisor) in enumerate(zip(pieces, divisors(pieces, train_sets), strict=True)):
                task_loss, parts = micro_backward(ctx, path, stepping, losses, task, indices, divisor, len(pieces),
                                                  last=i == len(pieces) - 1)
                task_losses.append(task_loss)
                for key, value in parts.items():
                    added.setdefault(key, []).append(value)
            return pieces, task_losses, added
        except Exception as exc:
            # With several processes the others are inside the update's gradient exchange: no retry.
            if not memory.out_of_memory(exc) or distributed.size() > 1:
                raise
            split = memory.after_oom(stepping.optimizer, p.split, batches, name, p.update)
            if not split:  # single examples already
                raise
            p.split = split


def one_update(ctx, path, stepping, stage, losses: StageLosses, batches: list[MicroBatch], train_sets: dict,
               named: dict, factor: float) -> Update:
    """One optimizer update at `factor` times each group's rate: the micro-batches' backward passes, the L2-SP
    penalty, clipping (accelerate unscales fp16 gradients first; the norm also tells a non-finite gradient), and the
    step, which leaves the weights alone where a loss or the gradient norm is not finite. Nothing here waits for the
    device: the update's values stay there until the records read them (training/numerics.py), where a non-finite
    update stops the run or is counted (`train.nonfinite`)."""
    pieces, task_losses, added = backward_all(ctx, path, stepping, losses, batches, train_sets, stage.name)
    penalty = l2sp_loss(stage.retain, ctx.pretrained, named)
    if penalty is not None:  # every process adds the same gradient (after DDP's averaging)
        ctx.accelerator.backward(penalty)
        added["retain:l2sp"] = [penalty.detach() / distributed.size()]  # the records sum the processes
    for group in stepping.optimizer.param_groups:  # a pure function of the step: no scheduler state
        group["lr"] = group["initial_lr"] * factor
    clip = ctx.prep.config.train.grad_clip
    norm = stepping.clip(clip) if clip else None
    values, names = stacked(task_losses, added)
    # Under fp16's loss scaler a non-finite gradient is the scaler's to handle: it skips the step, lowers the scale.
    scaled = getattr(ctx.accelerator, "scaler", None) is not None
    skip = found_inf(values, None if scaled or norm is None else norm.detach())
    ctx.state.stage.skipped += stepping.step(skip)
    stepping.optimizer.zero_grad(set_to_none=True)
    p = ctx.state.stage
    return Update(pieces, values, names, None if norm is None else norm.detach(), skip, p.update + 1,
                  ctx.state.step + 1)
