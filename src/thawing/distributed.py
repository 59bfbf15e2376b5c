"""Several processes training one model (`accelerate launch --num_processes N`, or `torchrun --nproc_per_node N`).

The launcher sets RANK and WORLD_SIZE; `init` joins the process group through accelerate. Every process then runs
the same plan (the update plan is a pure function of the data, the settings and the seed), each taking its slice of
every micro-batch (`shard`), and agrees with the others wherever a decision is not a pure function of what they all
hold: the run directory's name and the runtime are the main process's (`agree`), a signal seen by any process stops
all of them (`any_signal`). Inference over many batches (evaluation, probes, caches) is split by batch and gathered
(`map_batches`): each batch is computed exactly as one process would compute it, so gathered results equal one
process's. Only the main process (rank 0) writes files, logs and shows progress.

With one process nothing here communicates, and every function returns its input: a single-process run is
unchanged.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from thawing.errors import ThawingError

T = TypeVar("T")


def world_size() -> int:
    """Processes the launcher started (WORLD_SIZE; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (RANK; 0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes the run directory, logs and shows progress (rank 0)."""
    return rank() == 0


_ALONE = [False]  # inside `alone()`: this process works by itself, whatever the process group


def size() -> int:
    """Processes in the initialized process group (1 when there is none, or inside `alone()`): what collectives
    span."""
    import torch.distributed as dist

    if _ALONE[0] or not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """A block that one process runs by itself (the main one's report, after the others have finished): nothing in
    it communicates, so inference inside runs every batch here."""
    before, _ALONE[0] = _ALONE[0], True
    try:
        yield
    finally:
        _ALONE[0] = before


def init(device: str) -> int:
    """Join the launcher's process group (once per process); returns the number of processes. `device`: the config's
    `train.device`, which picks the backend (gloo on CPU, NCCL on GPUs) and, on GPUs, this process's own GPU, set
    before the model moves anywhere."""
    if world_size() == 1:
        _refuse_a_lone_process()
        return 1
    import torch
    from accelerate.state import PartialState

    PartialState(cpu=device == "cpu" or not torch.cuda.is_available())  # several processes: CUDA GPUs, or CPUs
    return size()


def _refuse_a_lone_process() -> None:
    """`accelerate launch --cpu --num_processes 2` without `--multi_cpu` starts one plain process: accelerate's
    simple launcher sets MASTER_ADDR/MASTER_PORT for the processes asked for and no RANK or WORLD_SIZE. Training on
    would quietly use one process where the user asked for several (and record world_size 1)."""
    asked = "MASTER_PORT" in os.environ and "ACCELERATE_USE_CPU" in os.environ and "RANK" not in os.environ
    if asked:
        raise ThawingError("accelerate started a single process although several were asked for (its launcher "
                           "sets MASTER_PORT but no RANK): on CPU, pass --multi_cpu with --num_processes N (or use "
                           "--num_processes 1)")


def leave(finished: bool) -> None:
    """Leave the process group at the end of a run. `finished`: the run ended without an error, so every process
    reaches this point; they wait for the main one (which writes the report last) and leave together. After an
    error only this process leaves. Why at all: a process that exits with its gloo or NCCL group still alive may
    abort in the group's destructor ("terminate called without an active exception"), which fails the launch."""
    import torch.distributed as dist

    if world_size() == 1 or not (dist.is_available() and dist.is_initialized()):
        return  # no launcher: any group is the caller's own, not `init`'s
    from accelerate.state import AcceleratorState

    if finished:
        dist.barrier()
    dist.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)  # a later run in this process joins a group again


def shard(indices: Sequence[int], parts: int | None = None, index: int | None = None) -> list[int]:
    """This process's contiguous slice of a micro-batch: `parts` slices (default: the processes) whose sizes differ
    by at most one, the first ones larger; a slice is empty when the micro-batch has fewer items than processes.

    Example:
        >>> shard([10, 11, 12, 13, 14], parts=2, index=0), shard([10, 11, 12, 13, 14], parts=2, index=1)
        ([10, 11, 12], [13, 14])
    """
    parts = size() if parts is None else parts
    index = rank() if index is None else index
    base, extra = divmod(len(indices), parts)
    start = index * base + min(index, extra)
    return list(indices[start : start + base + (index < extra)])


def agree(value: T) -> T:
    """The main process's `value`, on every process (any picklable value)."""
    if size() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_signal(number: int | None) -> int | None:
    """The highest signal number any process has received (None: none has): one process's SIGTERM stops all of them
    at the same update, so that none waits forever for the others."""
    if size() == 1:
        return number
    import torch
    import torch.distributed as dist
    from accelerate.state import PartialState

    flag = torch.tensor([number or 0], device=PartialState().device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def summed(values):
    """A tensor summed over the processes (in place; returned as is with one process)."""
    if size() == 1:
        return values
    import torch.distributed as dist

    dist.all_reduce(values)
    return values


def gathered(value: T) -> list[T]:
    """Every process's `value` (any picklable value), in rank order, on every process."""
    if size() == 1:
        return [value]
    import torch.distributed as dist

    out: list = [None] * size()
    dist.all_gather_object(out, value)
    return out


def map_batches(batches: Sequence[T], compute: Callable[[T], object], label: str,
                show: bool | None = None) -> Iterator[tuple[T, object]]:
    """(batch, compute(batch)) for every batch, in order. With several processes each computes every N-th batch (its
    share of each round of N) and all of them receive every result, so each process ends with the whole output;
    `compute` must not communicate. With one process it is a plain loop (with a progress bar, `label`)."""
    parts = size()
    if parts == 1:
        for batch in progress(batches, label, show):
            yield batch, compute(batch)
        return
    here = rank()
    for start in progress(range(0, len(batches), parts), label, show if is_main() else False):
        mine = start + here
        result = compute(batches[mine]) if mine < len(batches) else None
        for offset, value in enumerate(gathered(result)):
            if start + offset < len(batches):
                yield batches[start + offset], value


@contextlib.contextmanager
def built_once() -> Iterator[None]:
    """For a block that fills a disk cache: the main process runs it first, then, on each machine, the first process
    there (its disk may not be shared), then the rest, which find the entries written. Inside, nothing may
    communicate (the processes run the block at different times)."""
    if size() == 1:
        yield
        return
    from accelerate.state import PartialState

    state = PartialState()
    with state.main_process_first(), state.local_main_process_first():
        yield


def progress(items: Sequence, label: str, enabled: bool | None = None) -> Iterator:
    """Iterate with a progress bar on an interactive terminal when there are many items (or when asked); under a
    launcher, in the main process only."""
    if enabled is None:
        enabled = len(items) >= 64 and sys.stderr.isatty() and is_main()
    if not enabled:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=label, transient=True)

