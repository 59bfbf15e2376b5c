"""Trackers: live views of what a run logs to metrics.jsonl, through accelerate's trackers (`train.report_to`). Each
is fed every record as it is written, under the same names:

    <split>/<task>/<metric>     dev and test metrics; <split>/score the selection score
    train/<task>/loss           each task's training loss; train/examples_per_s, train/grad_norm; lr/<group>
    probe/<name>/<metric>       retention probes (drift's weight changes per group as probe/<name>/<metric>/<group>)

A name keeps letters, digits and `_ - . /` (what MLflow accepts): `lr/head:topic` is `lr/head_topic`. A value shared
by every task's record (speed, rates, the gradient norm) is logged once per step.

    tensorboard   event files in RUN/tensorboard/ (`tensorboard --logdir RUN`)
    mlflow        an MLflow run in the experiment named after the run (`name`); MLFLOW_TRACKING_URI where set, else
                  a file store in RUN/mlruns (`mlflow ui --backend-store-uri RUN/mlruns`)
    wandb         a Weights & Biases run in the project named after the run; WANDB_MODE=offline keeps it local
    trackio       a trackio run in the project named after the run

The run's config goes to each as its hyperparameters. A tracker's package is an optional extra, checked before the run
directory is made (`check_available`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator

from thawing.errors import ConfigError
from thawing.store import metric_lines
from thawing.training.contract import flat

TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny", "wandb": "wandb", "trackio": "trackio"}


def check_available(names: list[str]) -> None:
    """Every named tracker's package is installed.

    Raises:
        ConfigError: naming `train.report_to`, the tracker and what to install.
    """
    from accelerate.utils import imports

    missing = [name for name in names if not getattr(imports, f"is_{name}_available")()]
    if missing:
        packages = " ".join(PACKAGES[name] for name in missing)
        raise ConfigError(f"train.report_to: {', '.join(missing)} needs its package: pip install {packages} (or "
                          f"pip install -e '.[trackers]' from a clone)")


def scalars(record: dict) -> dict[str, float]:
    """A metrics.jsonl record as the trackers' scalars, by name."""
    if record["split"] == "train":
        out = {f"train/{record['task']}/loss": record["loss"], "train/examples_per_s": record["examples_per_s"]}
        if "grad_norm" in record:
            out["train/grad_norm"] = record["grad_norm"]
        out |= {f"lr/{group}": lr for group, lr in record["lr"].items()}
    else:
        prefix = "probe" if record["split"] == "probe" else record["split"]
        task = "" if record["task"] == metric_lines.SCORE else f"{record['task']}/"
        out = dict(_flat(record["metrics"], f"{prefix}/{task}"))
    return {_UNSAFE.sub("_", name): value for name, value in out.items()}


_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./]")


def _flat(values: dict, prefix: str) -> Iterator[tuple[str, float]]:
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


def hyperparameters(config: dict) -> dict[str, str | int | float | bool]:
    """The config as flat hyperparameters (a.b.c, as `contract.flat` spells keys); None, lists and empty mappings as
    JSON text."""
    return {key: json.dumps(value) if value is None or isinstance(value, (list, dict)) else value
            for key, value in flat(config).items()}


class Trackers:
    """The run's trackers (accelerate's), fed each record by `log`."""

    def __init__(self, names: list[str], run, config) -> None:
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, TrackioTracker, WandBTracker

        self.trackers = []
        self.step, self.logged = -1, set[str]()  # the shared training names logged at the current step
        for name in names:
            if name == "tensorboard":
                tracker = TensorBoardTracker("", run.tracker_dir(name))
            elif name == "mlflow":
                _mlflow_store(run)
                tracker = MLflowTracker(experiment_name=config.name, run_name=run.path.name)
            elif name == "wandb":
                tracker = WandBTracker(config.name, name=run.path.name, dir=str(run.path))
            else:
                tracker = TrackioTracker(config.name, name=run.path.name)
            tracker.start()
            tracker.store_init_configuration(hyperparameters(config.model_dump(mode="json")))
            self.trackers.append(tracker)

    def log(self, record: dict) -> None:
        if record["step"] != self.step:
            self.step, self.logged = record["step"], set[str]()
        values = scalars(record)
        if record["split"] == "train":  # what every task's record repeats, once per step
            shared = {name for name in values if not name.endswith("/loss")}
            values = {name: value for name, value in values.items() if name not in self.logged}
            self.logged |= shared
        for tracker in self.trackers:
            tracker.log(values, step=record["step"])

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def _mlflow_store(run) -> None:
    """MLflow writes where MLFLOW_TRACKING_URI says; without it, into a file store in the run directory (not the
    working one). MLflow keeps that store in maintenance and asks for an opt-in: thawing gives it for its own default,
    which needs no database package (a server or `sqlite:///...` through MLFLOW_TRACKING_URI is the way to more)."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow

        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(run.tracker_dir("mlruns").resolve().as_uri())


@contextlib.contextmanager
def closing(trackers: Trackers | None) -> Iterator[None]:
    try:
        yield
    finally:
        if trackers is not None:
            trackers.close()
