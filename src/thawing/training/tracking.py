"""Trackers: live views of what a run logs to metrics.jsonl. Each is fed every record as it is written, and is
imported only when `train.report_to` names it, so that its package stays an optional extra.

    tensorboard   event files in RUN/tensorboard/ (`tensorboard --logdir RUN`), through torch.utils.tensorboard:
                  dev/test metrics as `<split>/<task>/<metric>`, training loss as `train/<task>/loss`, rates as
                  `lr/<group>`, speed as `train/examples_per_s`, the gradient norm as `train/grad_norm`, probes as
                  `probe/<name>/<metric>`

Another tracker (trackio, wandb, mlflow) is a class with `log(record)` and `close()` added to TRACKERS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from thawing.errors import ThawingError


class TensorBoard:
    def __init__(self, folder):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ThawingError("train.report_to: tensorboard needs the tensorboard package: "
                               "pip install 'thawing[tensorboard]'") from exc
        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, record: dict) -> None:
        step, split, task = record["step"], record["split"], record["task"]
        if split == "train":
            self.writer.add_scalar(f"train/{task}/loss", record["loss"], step)
            self.writer.add_scalar("train/examples_per_s", record["examples_per_s"], step)
            if "grad_norm" in record:
                self.writer.add_scalar("train/grad_norm", record["grad_norm"], step)
            for group, lr in record["lr"].items():
                self.writer.add_scalar(f"lr/{group}", lr, step)
            return
        prefix = "probe" if split == "probe" else split
        for metric, value in _scalars(record["metrics"]):
            self.writer.add_scalar(f"{prefix}/{task}/{metric}", value, step)

    def close(self) -> None:
        self.writer.close()


def _scalars(metrics: dict, prefix: str = ""):
    for key, value in metrics.items():
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


TRACKERS = {"tensorboard": TensorBoard}


def open_trackers(names: list[str], run) -> list:
    return [TRACKERS[name](run.tracker_dir(name)) for name in names]


@contextlib.contextmanager
def close_all(trackers: list) -> Iterator[None]:
    try:
        yield
    finally:
        for tracker in trackers:
            tracker.close()
