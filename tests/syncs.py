"""Counting device-to-host syncs (tests/test_syncs.py, bench/profile_update.py): the waits of the host for the device.

A sync is counted by what the tensors do, not by which function asked for it: every read of a tensor's value into
Python (`.item()`, `float()`, `bool()`, `int()` lower to `aten._local_scalar_dense`), every operation whose output
shape depends on the data (`nonzero`, indexing by a boolean mask, `masked_select`, `unique`), and every copy of a tensor
into host memory (`.tolist()`, `.numpy()`, `.cpu()`, `.to("cpu")`, which on a CPU never reach the dispatcher, so
their Python calls are counted). On the CPU where the tests run every tensor is a host tensor, so the count is an
upper bound: a copy of a tensor that never left the host counts too.
"""

from __future__ import annotations

import traceback

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from thawing.progress import ProgressPrinter
from thawing.training import loop
from thawing.training.events import Evaluated, StageStarted, UpdateDone

# Operations that wait for the device: a value read into Python, or an output shape only the data decides.
WAITING_OPS = {"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "_unique2", "unique_dim",
               "unique_consecutive", "_unique", "repeat_interleave"}
HOST_COPIES = {"tolist", "numpy", "cpu"}
# Indexing by a boolean mask: its output shape is the mask's count (on a CPU it never reaches `nonzero` here).
MASK_INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}


def _is_mask(index) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


class SyncCounter(TorchDispatchMode):
    """Counts syncs (module docstring) with where each came from; `count` grows, `where` lists their call sites."""

    def __init__(self):
        super().__init__()
        self.count, self.where = 0, []
        self.functions = _HostCopies(self)

    def note(self, what: str) -> None:
        self.count += 1
        frames = [f for f in traceback.extract_stack()[:-2] if "/thawing/" in f.filename]
        site = f"{frames[-1].filename.split('/thawing/')[-1]}:{frames[-1].lineno}" if frames else "?"
        self.where.append(f"{what} @ {site}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in WAITING_OPS and not (name == "repeat_interleave" and (kwargs or {}).get("output_size")):
            self.note(name)
        elif name in MASK_INDEXING and any(_is_mask(i) for i in (args[1] if len(args) > 1 else [])):
            self.note(f"{name} by a boolean mask")
        elif name in ("_to_copy", "copy_") and _to_host(func, args, kwargs or {}):
            self.note(name)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self.functions.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self.functions.__exit__(*exc)


def _to_host(func, args, kwargs) -> bool:
    """A copy from a device into host memory (never true on a CPU-only run: see `_HostCopies`)."""
    if func.overloadpacket.__name__ == "copy_":
        dst, src = args[0], args[1]
        return dst.device.type == "cpu" and src.device.type != "cpu"
    device = kwargs.get("device")
    return device is not None and torch.device(device).type == "cpu" and args[0].device.type != "cpu"


class _HostCopies(TorchFunctionMode):
    """Host copies that a CPU tensor answers without the dispatcher: `.tolist()`, `.numpy()`, `.cpu()`. (Not
    `.to(device)`: on a CPU every device is the host, so a copy to the device cannot be told from one back.)"""

    def __init__(self, counter: SyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in HOST_COPIES:
            self.counter.note(name)
        return func(*args, **kwargs)


def syncs_per_update(config, tmp_path) -> tuple[list[int], list[list[str]], object]:
    """Train under the counter with the CLI's progress printer; returns the syncs of each update that neither logs
    nor evaluates, nor is a stage's first (each counted from the end of the update before it to its own end), with
    their call sites, and the run directory."""
    counter, marks = SyncCounter(), []

    def events(event) -> None:
        marks.append((type(event), getattr(event, "update", None), counter.count, list(counter.where)))

    with counter:
        run = loop.train(config, run_dir=str(tmp_path / "run"), callbacks=[ProgressPrinter(), events])
    every = config.train.log_every
    plain, sites, previous, skip = [], [], None, True
    for kind, update, count, where in marks:
        if kind is UpdateDone:
            if not skip and previous is not None and update % every != 0:  # a logging update reads the records
                plain.append(count - previous[0])
                sites.append(where[len(previous[1]):])
            skip = False
            previous = (count, where)
        elif kind in (StageStarted, Evaluated):
            skip = True  # the window up to the next update holds a stage's start or an evaluation
    return plain, sites, run


# fixture, packing, what trains: the whole model (packed or padded), the top layer on the boundary cache, the heads
# on cached features
