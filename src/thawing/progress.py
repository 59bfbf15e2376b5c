"""Training's progress on the terminal: a callback that turns training's events (training/events.py) into a
progress bar with each task's smoothed loss, a parameter table per stage, a metrics table per evaluation and the
final results. `thawing train` shows it, and so does `thawing.train(...)` unless `verbose=False`.

Without a terminal (a log file, CI) there is no bar: a plain line tells where the stage stands about every tenth of
its updates, so a log shows progress between evaluations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from thawing.training.events import (
    CacheNote,
    Evaluated,
    Event,
    Finished,
    PlanStopped,
    ScenarioStarted,
    StageEnded,
    StageStarted,
    UpdateDone,
)

SMOOTHING = 0.5  # each task's loss on the bar: a moving average over the updates whose losses are read (log_every)
RATE_AFTER_S = 1.0  # examples per second are shown once a second has passed: the first update alone says little


def metrics_table(title: str, results: dict[str, dict[str, float]], score: float | None = None) -> Table:
    metrics = sorted({m for r in results.values() for m in r})
    table = Table(title=title, title_justify="left")
    table.add_column("task")
    for m in metrics:
        table.add_column(m, justify="right")
    for task, r in results.items():
        table.add_row(task, *[f"{r[m]:.4f}" if m in r else "" for m in metrics])
    if score is not None:
        table.caption = f"score {score:.4f}"
    return table


class ProgressPrinter:
    """A training callback that prints (to stderr, so a command's result on stdout stays clean)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Any = None  # rich's Progress while a stage's bar is shown (on a terminal)
        self.bar: Any = None  # its task id; or, without a terminal, the stage under way
        self.smoothed: dict[str, float] = {}
        self.began, self.examples, self.next_line = 0.0, 0, 0
        self.handlers: dict[type, Callable[[Any], None]] = {
            StageStarted: self.stage_started, UpdateDone: self.update_done, Evaluated: self.evaluated,
            StageEnded: self.stage_ended, Finished: self.finished, CacheNote: self.cache_note,
            PlanStopped: self.plan_stopped, ScenarioStarted: self.scenario_started}

    def __call__(self, event: Event) -> None:
        self.handlers[type(event)](event)

    def stage_started(self, e: StageStarted) -> None:
        title = f"stage '{e.stage}'" + (" (frozen encoder: features computed once)" if e.cached else "")
        table = Table(title=title, title_justify="left")
        for col in ("group", "params", "trainable", "lr"):
            table.add_column(col, justify="right" if col != "group" else "left")
        for row in e.groups:
            lr = e.lrs.get(row["group"])
            table.add_row(row["group"], f"{row['params']:,}", "yes" if row["trainable"] else "frozen",
                          f"{lr:.2e}" if lr else "")
        self.console.print(table)

    def update_done(self, e: UpdateDone) -> None:
        if self.bar is None and self.progress is None:
            self._start(e)
        for task, loss in (e.tasks or {}).items():  # read every `train.log_every` updates
            self.smoothed[task] = SMOOTHING * self.smoothed.get(task, loss) + (1 - SMOOTHING) * loss
        self.examples += e.examples
        elapsed = time.perf_counter() - self.began
        rate = f"{self.examples / elapsed:,.0f} ex/s" if elapsed >= RATE_AFTER_S else ""
        losses = ("loss " + " ".join(f"{task} {loss:.3f}" for task, loss in sorted(self.smoothed.items()))
                  if self.smoothed else "")  # none read yet
        if self.progress is not None:
            self.progress.update(self.bar, completed=e.update, total=e.total, rate=rate, losses=losses)
        elif e.update >= self.next_line or e.update == e.total:
            self.next_line = e.update + max(1, e.total // 10)
            line = ", ".join(filter(None, (f"{e.stage}: update {e.update}/{e.total}", losses, rate)))
            self.console.print(line, markup=False, highlight=False)

    def _start(self, e: UpdateDone) -> None:
        self.smoothed, self.began, self.examples, self.next_line = {}, time.perf_counter(), 0, 0
        if not self.console.is_terminal:
            self.bar = e.stage  # the plain-line mode: a stage is under way
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[losses]}"),
                                 console=self.console, transient=True)
        self.progress.start()
        self.bar = self.progress.add_task(e.stage, total=e.total, rate="", losses="")

    def evaluated(self, e: Evaluated) -> None:
        self.console.print(metrics_table(f"{e.stage} step {e.step} epoch {e.epoch:.2f} ({e.split})", e.results,
                                         e.score))

    def stage_ended(self, e: StageEnded) -> None:
        self.stop()
        s = e.summary
        self.console.print(f"stage '{e.stage}': best {s['best_score']} at step {s['best_step']}, {s['stopped']}, "
                           f"{s['wall_s']}s", highlight=False, markup=False)

    def finished(self, e: Finished) -> None:
        self.stop()
        splits = ", ".join(sorted(set(e.results["splits"].values())))
        self.console.print(metrics_table(f"final model ({splits})", e.results["tasks"], e.results["score"]))

    def cache_note(self, e: CacheNote) -> None:
        self.console.print(f"cache: {e.message}", markup=False, highlight=False)

    def plan_stopped(self, e: PlanStopped) -> None:
        self.console.print(f"plan stopped: stage '{e.stage}' scored {e.score:.4f}, not better than {e.best:.4f}",
                           markup=False)

    def scenario_started(self, e: ScenarioStarted) -> None:
        self.console.rule(f"scenario '{e.scenario}'")

    def stop(self) -> None:
        """End the stage's bar (a stage ended, training failed): the terminal is left clean."""
        if self.progress is not None:
            self.progress.stop()
        self.progress = self.bar = None
