"""Device-to-host syncs per update: outside the updates that write training records, an update never makes the host
wait for the device more than once (issue 30: on a GPU, each wait stalls the kernel queue).

A sync is counted by what the tensors do, not by which function asked for it: every read of a tensor's value into
Python (`.item()`, `float()`, `bool()`, `int()` lower to `aten._local_scalar_dense`), every operation whose output
shape depends on the data (`nonzero`, boolean-mask indexing, `masked_select`, `unique`), and every copy of a tensor
into host memory (`.tolist()`, `.numpy()`, `.cpu()`, `.to("cpu")`, which on a CPU never reach the dispatcher, so
their Python calls are counted). On the CPU where the tests run every tensor is a host tensor, so the count is an
upper bound: a copy of a tensor that never left the host counts too.

Run: `.venv/bin/python -m pytest -q tests/test_syncs.py`
"""

from __future__ import annotations

import traceback

import pytest
import torch
from toy import toy_config
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from thawing.config import parse_config
from thawing.progress import ProgressPrinter
from thawing.training import loop
from thawing.training.events import Evaluated, StageStarted, UpdateDone

# Operations that wait for the device: a value read into Python, or an output shape only the data decides.
WAITING_OPS = {"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "_unique2", "unique_dim",
               "unique_consecutive", "_unique", "repeat_interleave"}
HOST_COPIES = {"tolist", "numpy", "cpu"}


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


def syncs_per_update(config, tmp_path) -> tuple[list[int], list[list[str]], dict]:
    """Train under the counter with the CLI's progress printer; returns the syncs of each update that neither logs
    nor evaluates, nor is a stage's first (each counted from the end of the update before it to its own end), with
    their call sites, and the whole run's counts by kind of update."""
    counter, marks = SyncCounter(), []

    def events(event) -> None:
        marks.append((type(event), getattr(event, "update", None), counter.count, list(counter.where)))

    with counter:
        loop.train(config, run_dir=str(tmp_path / "run"), callbacks=[ProgressPrinter(), events])
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
    return plain, sites, {"updates": len(plain), "total": counter.count}


CASES = {"qwen2-packed": ("tiny_qwen2_dir", True), "bert-padded": ("tiny_bert_dir", False),
         "bert-packed": ("tiny_bert_dir", True)}


@pytest.mark.parametrize("case", list(CASES))
def test_an_update_that_writes_no_records_waits_for_the_device_at_most_once(case, request, tmp_path):
    fixture, packed = CASES[case]
    model_dir = request.getfixturevalue(fixture)
    schedule = [{"name": "all", "train": ["all"], "epochs": 3, "eval_every": "epoch"}]
    raw = toy_config(model_dir, tmp_path, tasks=("sentiment", "ner"), schedule=schedule,
                     train={"batch_size": 4, "seed": 0, "log_every": 5, "grad_accum": 2, "checkpoint": False,
                            "packing": packed, "grad_clip": 1.0})
    counts, sites, _ = syncs_per_update(parse_config(raw), tmp_path)
    assert len(counts) >= 5, counts  # enough plain updates to judge by
    worst = max(range(len(counts)), key=counts.__getitem__)
    assert counts[worst] <= 1, f"{counts[worst]} syncs in one update: " + "; ".join(sites[worst])
