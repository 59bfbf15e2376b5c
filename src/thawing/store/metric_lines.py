"""Reading metrics.jsonl by kind, for the run report and the study.

metrics.jsonl holds three kinds of line, told apart by `split`:
    "dev" / "test"   an evaluation: {"stage", "step", "epoch", "split", "task": <task> or "*", "metrics": {...}}
                     ("*" holds the selection score: {"score": ...})
    "probe"          a retention probe, at the start ({"stage": "start"}) and after each stage ({"stage": <the stage
                     just ended>}): {"step", "task": <probe>, "metrics": {...}}; similarity probes report spearman and
                     spearman_retention, transfer probes accuracy and accuracy_retention, drift probes drift and
                     weight_norm_change {group: relative change}
    "train"          every `train.log_every` updates, per task: {"stage", "step", "task", "loss" (its mean since the
                     last record), "lr": {group: rate}, "examples_per_s", "time", and with train.grad_clip
                     "grad_norm" (the mean gradient norm before clipping over those updates)}
This module owns that shape: the loop writes its lines with `evaluation`, `probe` and `training`, and reading them
back checks each with `is_record`. Everything here is a pure function of the lines (and stages.json), so it is tested
on hand-made runs.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

SCORE = "*"  # the task name evaluation lines use for the selection score
START = "start"  # the stage name of the probe line taken before anything trained
RETENTION_SUFFIX = "_retention"


def evaluation(stage: str, step: int, epoch: float, split: str, task: str, metrics: dict) -> dict:
    """An evaluation line: a task's metrics on `split` (or, with task `SCORE`, the selection score)."""
    return {"stage": stage, "step": step, "epoch": round(epoch, 3), "split": split, "task": task, "metrics": metrics}


def probe(point: str, step: int, name: str, metrics: dict) -> dict:
    """A probe line, at `point`: `START` or the stage just ended."""
    return {"stage": point, "step": step, "epoch": None, "split": "probe", "task": name, "metrics": metrics}


def training(stage: str, step: int, task: str, loss: float, lrs: dict[str, float], examples_per_s: float,
             batches: int | None = None, grad_norm: float | None = None) -> dict:
    """A training line: a task's mean loss since the last one (an added loss, e.g. "retain:distill", is a task of its
    own and has no `batches`), the groups' rates, speed, and the updates' mean gradient norm where it was taken."""
    line = {"stage": stage, "step": step, "split": "train", "task": task, "loss": loss, "lr": lrs,
            "examples_per_s": round(examples_per_s, 1), "time": round(time.time(), 3)}
    if batches is not None:
        line["batches"] = batches
    if grad_norm is not None:
        line["grad_norm"] = grad_norm
    return line


def is_record(record: Any) -> bool:
    """Whether `record` has the shape of a line: task and step, and either metrics (a mapping of names to numbers;
    probes also give None for an undefined retention and a mapping per layer group) or, for a training line, a loss
    and the groups' learning rates."""
    if not (isinstance(record, dict) and isinstance(record.get("task"), str) and _is_number(record.get("step"))
            and isinstance(record.get("step"), int)):
        return False
    if record.get("split") == "train":
        return (_is_number(record.get("loss")) and isinstance(record.get("lr"), dict)
                and all(_is_number(v) for v in record["lr"].values()))
    return isinstance(record.get("metrics"), dict) and all(
        _is_number(v) or v is None or (isinstance(v, dict) and all(_is_number(x) for x in v.values()))
        for v in record["metrics"].values())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def of_split(lines: list[dict], split: str) -> list[dict]:
    """The lines of one kind: "dev", "test", "probe" or "train" (evaluation lines without a split are dev)."""
    return [line for line in lines if line.get("split", "dev") == split]


def stage_starts(stages: list[dict], lines: list[dict]) -> list[tuple[int, str]]:
    """(optimizer step at which each stage began, its name), in stages.json order.

    A stage begins where the one before it ended, and a stage's last line (its final evaluation, or the probe taken
    after it) sits at its last update; the sum of the update counts is the fallback for a stage with no line.
    """
    last: dict[str, int] = {}
    for line in lines:
        if line.get("stage") is not None and line.get("step") is not None:
            last[line["stage"]] = max(last.get(line["stage"], 0), int(line["step"]))
    names = [s["stage"] for s in stages]
    starts, step = [], 0
    for s in stages:
        starts.append((step, s["stage"]))
        # A name used by two stages cannot tell their lines apart: count updates instead.
        step = last[s["stage"]] if s["stage"] in last and names.count(s["stage"]) == 1 else step + s.get("updates", 0)
    return starts


def task_shares(lines: list[dict]) -> dict[str, float] | None:
    """Each task's share of the training updates, from the training lines; None where they cannot tell.

    A line that says how many micro-batches it covers (`batches`) counts that many. Without it a line counts as one
    update only when the lines show one record per update (one line per step, steps consecutive within a stage, as
    with `log_every: 1` and one micro-batch per update); with coarser logging a line covers several updates of
    several tasks and the count would only measure how often each task was logged.
    """
    train = of_split(lines, "train")
    if not train:
        return None
    counts: Counter = Counter()
    if all(isinstance(line.get("batches"), (int, float)) for line in train):
        for line in train:
            counts[line["task"]] += line["batches"]
    else:
        steps = defaultdict(list)
        for line in train:
            steps[line["stage"]].append(int(line["step"]))
        for values in steps.values():
            ordered = sorted(values)
            if any(b - a != 1 for a, b in zip(ordered, ordered[1:], strict=False)):
                return None
        counts.update(line["task"] for line in train)
    total = sum(counts.values())
    return {task: counts[task] / total for task in sorted(counts)} if total else None


def probe_headline(metrics: dict) -> tuple[str, float] | None:
    """The number that says how much a probe kept: its retention (value over the pretrained value), or, for a drift
    probe, its drift (lower is less change). None for a probe with neither."""
    for name, value in metrics.items():
        if name.endswith(RETENTION_SUFFIX) and isinstance(value, (int, float)):
            return name, float(value)
    if isinstance(metrics.get("drift"), (int, float)):
        return "drift", float(metrics["drift"])
    return None


def probe_points(lines: list[dict]) -> dict[str, list[tuple[str, int, dict]]]:
    """Per probe: (stage, step, metrics) at each probe point, in order (the start first)."""
    out: dict[str, list] = defaultdict(list)
    for line in of_split(lines, "probe"):
        out[line["task"]].append((line["stage"], line["step"], line["metrics"]))
    return dict(out)
