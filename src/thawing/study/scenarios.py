"""The scenarios a freezing study can run, parsed and checked before anything trains.

    frozen, heads, progressive, full   the plan presets (`training/stages.py`)
    config                             the config's own plan, as written
    head-frozen:<task>                 the config's own plan with that task's head frozen throughout: its loss still
                                       reaches the shared encoder and its metric is still tracked
    single:<task>                      the config's own plan on that task alone (what sharing the encoder costs it)
    NAME=path/to/schedule.yaml         an explicit stage list (the shape of `schedule:` in a config), relative to the
                                       working directory; a sweep of stage rates is one file per point
    <scenario>+distill, +l2sp          that scenario anchored to the pretrained encoder (`retain:` for every stage,
                                       training/retain.py): embedding distillation, L2-SP, or both
                                       (`full+distill+l2sp`); the weights are the config's `retain:` where it sets
                                       that anchor, else the defaults (distill 1.0 cosine, l2sp 0.01)

Every scenario becomes a complete `RunConfig` here; `check_plans` then resolves each one's stages against the real
model's parameter groups, so a bad selector fails the study before its first run rather than after its third.
"""

from __future__ import annotations

import difflib
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from thawing.config import (
    DistillConfig,
    EarlyStopping,
    L2SPConfig,
    RetainConfig,
    RunConfig,
    StageConfig,
    StageRates,
    parse_config,
)
from thawing.errors import ConfigError, InputError
from thawing.training.stages import PRESETS

OWN_PLAN = "config"
HEAD_FROZEN = "head-frozen:"
SINGLE = "single:"
ANCHORS = {"distill": DistillConfig, "l2sp": L2SPConfig}  # `+<anchor>` after a scenario
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Scenario:
    """One scenario of a study: its name, what kind it is, and the config it trains."""

    name: str
    kind: str  # preset | config | head-frozen | single-task | schedule
    config: RunConfig
    task: str | None = None  # head-frozen and single-task: the task
    source: str | None = None  # schedule: the file
    base: str | None = None  # anchored (`full+distill`): the scenario it anchors, which the claims compare it with
    anchors: tuple[str, ...] = ()

    @property
    def dir_name(self) -> str:
        """The run directory's name inside the study (no ':' in file names)."""
        return self.name.replace(":", "-")

    def describe(self) -> dict:
        return {k: v for k, v in (("kind", self.kind), ("task", self.task), ("source", self.source),
                                  ("base", self.base), ("anchors", list(self.anchors) or None)) if v is not None}


def parse_scenarios(config: RunConfig, specs: list[str], num_layers: int | None) -> list[Scenario]:
    """Each spec as a `Scenario`, with its config built and validated. Only a head-frozen scenario over a preset
    needs the model's depth (`num_layers`, to expand the preset): with None, it is checked but keeps the config as
    is, so every name can be checked before a model loads.

    Raises:
        InputError: an unknown or repeated scenario, a task the config lacks, an unreadable schedule file.
        ConfigError: a schedule file whose stages are not valid (with the file named).
    """
    if not specs:
        raise InputError(f"no scenario given; choose from {', '.join(valid_forms())}")
    scenarios = [_parse(config, spec.strip(), num_layers) for spec in specs]
    for what in ("name", "dir_name"):
        names = [getattr(s, what) for s in scenarios]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InputError(f"scenarios must be distinct; repeated: {', '.join(repeated)}")
    return scenarios


def valid_forms() -> list[str]:
    return [*PRESETS, OWN_PLAN, f"{HEAD_FROZEN}<task>", f"{SINGLE}<task>", "NAME=schedule.yaml",
            *(f"<scenario>+{a}" for a in ANCHORS)]


def _parse(config: RunConfig, spec: str, num_layers: int | None) -> Scenario:
    if "+" in spec and "=" not in spec:  # NAME=file.yaml names a file, which may hold a '+'
        base, *anchors = (part.strip() for part in spec.split("+"))
        unknown = [a for a in anchors if a not in ANCHORS]
        if unknown or len(set(anchors)) != len(anchors):
            raise InputError(f"scenario '{spec}': after '+' name each of {', '.join(ANCHORS)} at most once")
        return anchored(_parse(config, base, num_layers), spec, anchors)
    if spec in PRESETS:
        return Scenario(spec, "preset", config.model_copy(update={"schedule": spec}))
    if spec == OWN_PLAN:
        return Scenario(spec, "config", config)
    if spec.startswith(HEAD_FROZEN):
        task = _task(config, spec, spec[len(HEAD_FROZEN) :])
        return Scenario(spec, "head-frozen", head_frozen(config, task, num_layers), task=task)
    if spec.startswith(SINGLE):
        task = _task(config, spec, spec[len(SINGLE) :])
        return Scenario(spec, "single-task", single_task(config, task), task=task)
    if "=" in spec:
        name, path = (part.strip() for part in spec.split("=", 1))
        if not _NAME.match(name) or name in PRESETS or name == OWN_PLAN:
            raise InputError(
                f"scenario '{spec}': NAME must be letters, digits, '_', '.' or '-' and not a preset's name"
            )
        return Scenario(name, "schedule", with_schedule(config, read_schedule(path), path), source=path)
    raise InputError(f"unknown scenario '{spec}'; choose from {', '.join(valid_forms())}")


def anchored(scenario: Scenario, name: str, anchors: list[str]) -> Scenario:
    """`scenario` with the anchors added to its config's top-level `retain:` (which every stage without its own
    `retain:` uses), each at the config's own settings when it has them, else at the defaults."""
    retain = scenario.config.retain or RetainConfig()
    retain = retain.model_copy(update={a: getattr(retain, a) or ANCHORS[a]() for a in anchors})
    return Scenario(name, scenario.kind, scenario.config.model_copy(update={"retain": retain}), task=scenario.task,
                    source=scenario.source, base=scenario.name, anchors=tuple(anchors))


def _task(config: RunConfig, spec: str, task: str) -> str:
    if task not in config.tasks:
        raise InputError(f"scenario '{spec}': no task '{task}' in the config; tasks: {', '.join(config.tasks)}")
    return task


def head_frozen(config: RunConfig, task: str, num_layers: int | None) -> RunConfig:
    """The config's own plan with `head:<task>` frozen in every stage.

    `freeze:` shapes only the plan a config without `schedule:` builds (one stage), so a config with a schedule (a
    preset or a list) gets `-head:<task>` added to each stage's selectors instead; the presets are expanded first,
    as the run would expand them.
    """
    from thawing.training.stages import stage_configs

    target = f"head:{task}"
    if config.schedule is None:
        return config.model_copy(update={"freeze": [*config.freeze, target]})
    if num_layers is None and isinstance(config.schedule, str):  # checking names only: the preset expands later
        return config
    stages = [
        s.model_copy(update={"train": [*s.train, f"-{target}"]}) if s.train else s
        for s in stage_configs(config, num_layers or 0)  # a list needs no depth
    ]
    return with_schedule(config, stages)


def single_task(config: RunConfig, task: str) -> RunConfig:
    """The config's own plan on `task` alone. A selection metric naming another task falls back to the default."""
    metric = config.selection_metric
    other = metric is not None and "/" in metric and metric.rpartition("/")[0] != task
    return config.model_copy(
        update={"tasks": {task: config.tasks[task]}, "selection_metric": None if other else metric}
    )


def read_schedule(path: str | Path) -> list[StageConfig]:
    """The stage list a YAML file holds (the shape of `schedule:` in a config).

    Raises:
        InputError: a missing or unreadable file, or one that holds no list.
        ConfigError: every invalid stage key at once, by stage and dotted path, with the closest valid name.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("schedule file not found", path=path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {exc}", path=path) from None
    if not isinstance(raw, list) or not raw:
        raise InputError("a schedule file holds a non-empty list of stages (the shape of 'schedule:')", path=path)
    try:
        return TypeAdapter(list[StageConfig]).validate_python(raw)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
        raise ConfigError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems)) from None


def _describe(err: dict) -> str:
    """One stage problem as `schedule.<i>.<key>: ...`, as the config loader words it."""
    where = "schedule." + ".".join(str(p) for p in err["loc"])
    if err["type"] != "extra_forbidden":
        return f"{where}: {err['msg']}"
    names = [*StageConfig.model_fields, *StageRates.model_fields, *EarlyStopping.model_fields]
    hint = difflib.get_close_matches(str(err["loc"][-1]), names, n=1, cutoff=0.5)
    return f"{where}: unknown key" + (f" (did you mean '{hint[0]}'?)" if hint else "")


def with_schedule(config: RunConfig, stages: list[StageConfig], source: str = "config") -> RunConfig:
    """The config with an explicit stage list, validated as a whole config: errors read as they would inside one
    (`schedule.0.epochs: ...`, did-you-mean), headed by `source`."""
    raw = config.model_dump(mode="json", exclude_unset=True)
    raw["schedule"] = [s.model_dump(mode="json", exclude_unset=True) for s in stages]
    return parse_config(raw, source=source)


def check_plans(scenarios: list[Scenario], groups: OrderedDict[str, list], run_optional: bool | None,
                model=None) -> dict:
    """Resolve every scenario's stages against the model's groups (heads of tasks a scenario lacks left out); returns
    each scenario's plan: stage names and trainable parameters per stage. `model` resolves LoRA stages' targets.

    Raises:
        ConfigError: a selector that names nothing, or a plan with no stage to run (named by scenario).
    """
    from thawing.training.stages import build_plan, plan_summary

    plans = {}
    for s in scenarios:
        own = OrderedDict((g, m) for g, m in groups.items() if not g.startswith("head:") or g[5:] in s.config.tasks)
        try:
            summary = plan_summary(build_plan(s.config, own, run_optional, model), own)
        except ConfigError as exc:
            raise ConfigError(f"scenario '{s.name}': {exc}") from None
        plans[s.name] = [{"stage": st["name"], "trainable_params": st["trainable_params"]} for st in summary["stages"]]
    return plans
