"""Out of GPU memory in an update: split its micro-batches and run the same update again.

A token budget (`train.max_tokens`) that fits one card may not fit another: the stella-shaped model's eager 16k-token
full fine-tuning step peaked at 79 GB on an H200, more than an 80 GB H100 leaves free. Rather than fail, the update
that ran out is run again with each micro-batch cut in two (then four, ...), for the rest of the stage. The update is
the same: a micro-batch's summed loss is divided by its task's labelled items in the update and weighed by the task's
share of micro-batches (`updates.divisors`), and halving every micro-batch doubles both counts, so the gradients are
equal up to float reduction order. Only the memory peak and the speed change, and the log says so.
"""

from __future__ import annotations

import logging

import torch

from thawing.training.updates import MicroBatch

log = logging.getLogger(__name__)


def split(batches: list[MicroBatch], parts: int) -> list[MicroBatch]:
    """Each micro-batch cut into `parts` consecutive pieces of near-equal size (a piece is never empty)."""
    if parts == 1:
        return list(batches)
    out = []
    for task, indices in batches:
        n = min(parts, len(indices))
        size, extra = divmod(len(indices), n)
        starts = [i * size + min(i, extra) for i in range(n + 1)]
        out += [(task, indices[a:b]) for a, b in zip(starts, starts[1:], strict=False)]  # neighbours
    return out


def out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError)


def after_oom(optimizer, parts: int, batches: list[MicroBatch], stage: str, update: int) -> int:
    """The split to run the update with after it ran out of memory at `parts`: twice as many pieces. Drops the
    partial gradients and the allocator's cache. Raises (the caller re-raises the error) when every micro-batch is
    one example already."""
    if all(len(indices) <= parts for _, indices in batches):
        return 0
    optimizer.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    largest = max(len(indices) for _, indices in batches)
    log.warning("stage %s, update %d: out of GPU memory with micro-batches of up to %d examples; each micro-batch "
                "now runs in %d pieces for the rest of the stage (same updates, more passes)",
                stage, update + 1, -(-largest // parts), parts * 2)
    return parts * 2
