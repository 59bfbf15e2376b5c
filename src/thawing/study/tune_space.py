"""A tuned plan from one Optuna trial: the plan knobs of `tune.space` (config/schema.py `TuneSpace`) sampled
define-by-run (`trial.suggest_*`), and the stage list they make, in the shape of `schedule:`.

    shape                 which stages run, in order: heads, top, discriminative, full, lora (as in the presets)
    epochs.<stage>        each chosen stage's epochs
    heads_lr              the heads-only stage's rate
    head_lr               the heads' rate in the stages that train the encoder
    top_layers, top_lr    the top stage: its layers and their rate
    discriminative_layers, encoder_lr, layer_decay   the discriminative stage; full trains all layers at encoder_lr
    lora_rank, lora_lr    the LoRA stage (the top half of the layers, queries and values, alpha 2 x rank)
    warmup                every stage that trains the encoder
    distill               retain.distill's weight in those stages (searched where the space or the objectives ask)
    early_stopping        every stage's plateau stop: fixed, not searched (`with_tune` gives it the presets')

A knob a trial's shape does not use is never sampled, so TPE models each shape's own knobs. `preset_params` maps a
preset onto these knobs, so that a study can start from the presets (`tune.start`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from thawing.config import DistillConfig, LoraSettings, RetainConfig, StageConfig, TuneSpace
from thawing.config.schema import TUNE_STAGES
from thawing.errors import ConfigError


def layer_ranges(space: TuneSpace, num_layers: int) -> dict[str, tuple[int, int]]:
    """The layer-count knobs against the model: the space's ranges, or their defaults.

    Raises:
        ConfigError: a range past the model's layers.
    """
    ranges = {"top_layers": space.top_layers or (1, max(1, num_layers // 2)),
              "discriminative_layers": space.discriminative_layers or (1, num_layers)}
    for name, (_, high) in ranges.items():
        if high > num_layers:
            raise ConfigError(f"tune.space.{name}: {high} layers asked; the model has {num_layers}")
    return ranges


def distill_range(space: TuneSpace, objectives: Sequence[str]) -> tuple[float, float] | None:
    """retain.distill's range: the space's, else [0, 1] when retention is an objective; None: not searched."""
    return space.distill or ((0.0, 1.0) if "retention" in objectives else None)


def shape_name(shape: Sequence[str]) -> str:
    return "+".join(shape)


def suggest_plan(trial: Any, space: TuneSpace, num_layers: int, objectives: Sequence[str]) -> list[StageConfig]:
    """The stage list one trial tries (an `optuna.Trial`, or a `FixedTrial` to check a plan without training)."""
    shape = trial.suggest_categorical("shape", [shape_name(s) for s in space.shapes]).split("+")
    layers = layer_ranges(space, num_layers)
    distill = distill_range(space, objectives)
    stages = []
    for name in shape:
        low, high = space.epochs[name]  # the schema checks every shape's stage has a range
        stage: dict[str, Any] = {"name": name, "epochs": trial.suggest_int(f"epochs.{name}", low, high),
                                 "early_stopping": space.early_stopping}
        if name == "heads":
            stage.update(train=["heads"], lr={"heads": _rate(trial, "heads_lr", space.heads_lr)})
        else:
            stage.update(_encoder_stage(trial, name, space, layers, num_layers))
            stage["warmup"] = trial.suggest_float("warmup", *space.warmup)
            if distill is not None:
                stage["retain"] = RetainConfig(distill=DistillConfig(weight=trial.suggest_float("distill", *distill)))
        stages.append(StageConfig(**stage))
    return stages


def _encoder_stage(trial: Any, name: str, space: TuneSpace, layers: dict[str, tuple[int, int]],
                   num_layers: int) -> dict:
    head = _rate(trial, "head_lr", space.head_lr)
    if name == "top":
        k = trial.suggest_int("top_layers", *layers["top_layers"])
        return {"train": ["heads", "projection", f"layers[-{k}:]"],
                "lr": {"heads": head, "encoder": _rate(trial, "top_lr", space.top_lr)}}
    if name == "lora":
        rank = trial.suggest_categorical("lora_rank", space.lora_rank)
        lora = LoraSettings(r=rank, alpha=2 * rank, dropout=0.05, layers=f"layers[-{max(1, num_layers // 2)}:]",
                            targets=["query", "value"])
        return {"train": ["heads", "projection"], "lora": lora,
                "lr": {"heads": head, "encoder": _rate(trial, "lora_lr", space.lora_lr)}}
    encoder = _rate(trial, "encoder_lr", space.encoder_lr)
    decay = trial.suggest_float("layer_decay", *space.layer_decay)
    if name == "full":
        return {"train": ["all"], "lr": {"heads": head, "encoder": encoder}, "layer_decay": decay}
    k = trial.suggest_int("discriminative_layers", *layers["discriminative_layers"])
    return {"train": ["heads", "projection", f"layers[-{k}:]"], "lr": {"heads": head, "encoder": encoder},
            "layer_decay": decay}


def _rate(trial: Any, name: str, bounds: tuple[float, float]) -> float:
    return trial.suggest_float(name, *bounds, log=True)


def knob_ranges(space: TuneSpace, num_layers: int, objectives: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Every numeric knob's range against the model: each stage's epochs, the layer counts, the rates, layer decay,
    warm-up, and distill's where it is searched."""
    ranges: dict[str, tuple[float, float]] = {f"epochs.{s}": r for s, r in space.epochs.items()}
    ranges.update(layer_ranges(space, num_layers))
    ranges.update({k: getattr(space, k) for k in ("heads_lr", "head_lr", "top_lr", "encoder_lr", "lora_lr",
                                                  "layer_decay", "warmup")})
    distill = distill_range(space, objectives)
    if distill is not None:
        ranges["distill"] = distill
    return ranges


def corner_params(space: TuneSpace, num_layers: int, objectives: Sequence[str], shape: Sequence[str],
                  high: bool) -> dict:
    """Every knob at its low (or high) end, for `shape`: a `FixedTrial`'s params, to resolve a shape's plan against
    the model before anything trains."""
    pick = 1 if high else 0
    params: dict[str, Any] = {"shape": shape_name(shape), "lora_rank": space.lora_rank[-pick]}
    params.update({k: r[pick] for k, r in knob_ranges(space, num_layers, objectives).items()})
    return params


def preset_params(stages: Sequence[StageConfig], space: TuneSpace, num_layers: int, objectives: Sequence[str],
                  warmup: float, count_layers: Callable[[list[str]], int]) -> dict:
    """A preset's plan as a trial's params (for `study.enqueue_trial`): the stages a trial runs (not the optional
    ones: trials run none), each knob clipped into the space's range. The space has one heads rate and one warm-up for
    all the encoder stages: the first encoder stage's are taken (`progressive`: heads 5e-4 in both, not 3e-4 in its
    discriminative stage). `warmup`: the rate of a stage that sets none (train.warmup); `count_layers`: the layers
    a stage's `train` selectors pick.

    Raises:
        ConfigError: a stage no shape can hold (frozen, pairs).
    """
    run = [s for s in stages if not s.optional]
    unknown = [s.name for s in run if s.name not in TUNE_STAGES]
    if unknown:
        raise ConfigError(f"no tuned plan has the stage(s) {', '.join(unknown)}")
    params: dict[str, Any] = {"shape": shape_name([s.name for s in run])}
    for stage in run:
        params[f"epochs.{stage.name}"] = round(stage.epochs)
        if stage.name == "heads":
            params["heads_lr"] = stage.lr.heads
            continue
        params.setdefault("head_lr", stage.lr.heads)
        params.setdefault("warmup", warmup if stage.warmup is None else stage.warmup)
        if stage.name == "lora" and stage.lora is not None:
            params.update(lora_rank=stage.lora.r, lora_lr=stage.lr.encoder)
        elif stage.name == "top":
            params.update(top_layers=count_layers(stage.train), top_lr=stage.lr.encoder)
        else:
            params.update(encoder_lr=stage.lr.encoder, layer_decay=stage.layer_decay)
            if stage.name == "discriminative":
                params["discriminative_layers"] = count_layers(stage.train)
    ranges = knob_ranges(space, num_layers, objectives)
    if "distill" in ranges:
        params["distill"] = 0.0
    out = {}
    for name, value in params.items():
        if value is None:
            continue
        if name == "lora_rank":
            value = min(space.lora_rank, key=lambda r: abs(r - value))
        elif name in ranges:
            value = min(max(value, ranges[name][0]), ranges[name][1])
        out[name] = value
    return out
