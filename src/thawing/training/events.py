"""What training tells its caller as it goes: typed events, each handed to every callback (`thawing.train(config,
callbacks=[...])`; the CLI's progress printer is one). A callback is any callable taking one event; it picks the
kinds it cares about, e.g. `if isinstance(event, Evaluated): ...`. Events come from the main process only, in order:

    StageStarted    a stage begins: its parameter groups (params, trainable), rates, whether its encoder is cached
    CacheNote       a cache was built or could not be (frozen features, the boundary cache)
    UpdateDone      after every optimizer update: the stage's update count, examples; the update's loss per task
                    on the updates that write training records (`train.log_every`), None on the others (their
                    losses stay on the device: reading them every update would make a GPU wait for the host)
    Evaluated       after every evaluation: each task's metrics on the split, and the selection score
    StageEnded      a stage ends: its summary as stages.json records it (best score and step, why it stopped, time)
    PlanStopped     the plan stops: a stage did not beat the best score so far
    Finished        the final model's results, as results.json records them
    ScenarioStarted (a study, an interpolation) the next run of several begins

Events are read-only records; a callback that raises stops training with its error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StageStarted:
    stage: str
    groups: list[dict]  # {"group", "params", "trainable"} per parameter group (model/freezing.py parameter_table)
    lrs: dict[str, float]  # each trained group's learning rate
    cached: bool  # the encoder is frozen: heads train on features computed once


@dataclass(frozen=True)
class CacheNote:
    message: str


@dataclass(frozen=True)
class UpdateDone:
    stage: str
    update: int  # updates done in the stage
    total: int  # the stage's planned updates (an estimate past epoch 0)
    loss: float | None  # the update's summed task losses (None: not read on this update, see above)
    tasks: dict[str, float] | None  # each task's mean loss in the update (None: not read)
    examples: int  # examples the update trained on


@dataclass(frozen=True)
class Evaluated:
    stage: str
    step: int  # optimizer updates over the whole plan
    epoch: float  # the stage's epochs so far
    split: str
    results: dict[str, dict[str, float]]  # task -> metric -> value
    score: float  # the selection score


@dataclass(frozen=True)
class StageEnded:
    stage: str
    summary: dict  # as stages.json records it: best_score, best_step, stopped, wall_s, updates, ...


@dataclass(frozen=True)
class PlanStopped:
    stage: str
    score: float
    best: float


@dataclass(frozen=True)
class Finished:
    results: dict  # as results.json records it: tasks, score, splits (and probes)


@dataclass(frozen=True)
class ScenarioStarted:
    scenario: str  # a study's scenario (", seed N" with several seeds), or an interpolation's "alpha A"


# A union, not a base class: a callback matches the kinds it wants with isinstance (or `match`).
Event = StageStarted | CacheNote | UpdateDone | Evaluated | StageEnded | PlanStopped | Finished | ScenarioStarted
Callback = Callable[[Event], None]


def fan_out(callbacks: list[Callback]) -> Callback:
    """One callback that hands each event to every one of `callbacks`, in order."""

    def emit(event: Event) -> None:
        for callback in callbacks:
            callback(event)

    return emit
