"""A stage plan as data: which groups train in each stage, the learning rate of every group, how long,
and when to stop. `build_plan` turns the config (a `schedule` list, a preset name, or the simple
`freeze` scenario) into resolved `Stage`s that `thawing plan` prints and the loop runs.

Adam moments are reset at every stage boundary: each stage builds a fresh optimizer over exactly the
parameters it trains. That keeps the rule "every parameter that trains is in the optimizer, with this
stage's rate" true by construction, and a newly thawed layer does not inherit stale moments.

A stage with `lora` also trains LoRA adapters (model/lora.py): resolved here against the plain model (`AdapterPlan`),
their groups (`lora:layers.i`) join the stage's trainable groups at the encoder rate of their layer (layer decay
included); the loop attaches them when the stage starts and merges them when it ends.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from thawing.config import PRESETS, EarlyStopping, LoraSettings, RetainConfig, RunConfig, StageConfig, StageRates
from thawing.errors import ConfigError
from thawing.model.freezing import encoder_frozen, layer_names, select_groups
from thawing.model.lora import AdapterPlan, plan_adapters
from thawing.training.retain import distills
from thawing.training.schedule import layer_learning_rates

FUSED_DEVICES = ("cuda", "cpu")  # where torch has a fused AdamW (CPU since torch 2.4)


@dataclass
class Stage:
    """A resolved stage: group names and their learning rates."""

    name: str
    trainable: list[str]
    lrs: dict[str, float]
    epochs: float
    warmup: float
    lr_schedule: str
    eval_every: int | str
    patience: int | None = None
    min_delta: float = 0.0
    metric: str | None = None
    restore_best: bool = True
    optional: bool = False
    retain: RetainConfig | None = None  # anchoring to the pretrained encoder (training/retain.py)
    lora: AdapterPlan | None = None  # adapters this stage attaches, trains and merges (their groups are in trainable)
    task_loss: bool = True  # false: only the losses on sentence embeddings train (pairs, distillation)
    pair_loss: float | None = None  # the pair-loss weight of classification tasks that set none (config: StageConfig)
    # Set for runs whose dev split is too small to choose by (training/small_data.py); the defaults change nothing.
    stops_plan: bool = True  # a stage that does not beat the best so far stops the plan
    head_check: bool = False  # heads-only on centroid starts: train only where cross-validation says it helps
    skips: tuple[str, ...] = ()  # tasks with no head (similarity, retrieval) that this stage leaves out: its encoder
    # and projection are frozen




def preset(name: str, num_layers: int, token_only: bool = False) -> list[StageConfig]:
    """The named plans. "Top" and "more" layers scale with depth: MiniLM (6) 2 and 6, stella (28) 3 and 14; LoRA
    adapts the top half (MiniLM 3, stella 14). `token_only` (every task of the run tags tokens): the stages that
    train the whole encoder get a token task's budget (`token_budget`)."""
    top = 2 if num_layers <= 12 else 3
    more = min(num_layers, max(num_layers // 2, 6))
    half = max(1, num_layers // 2)
    # heads 3e-2: dev score 0.905 vs 0.810 with 1e-3 (TREC coarse+fine+SST-2, docs/benchmarks.md)
    heads = StageConfig(name="heads", train=["heads"], epochs=4, lr={"heads": 3e-2}, early_stopping=PLATEAU)
    discriminative = StageConfig(
        name="discriminative",
        train=["heads", "projection", f"layers[-{more}:]"],
        epochs=2,
        # encoder 1e-4 (was 5e-5): the better mean dev score on both mixes tried, 3 seeds each (TREC coarse + SST-2
        # 0.875 vs 0.870, every seed; TREC coarse + fine + SST-2 0.876 vs 0.874, 2 of 3), docs/benchmarks.md (#17)
        lr={"heads": 3e-4, "encoder": 1e-4},
        layer_decay=0.8,
        early_stopping=PLATEAU,
    )
    stages = {
        "frozen": [StageConfig(name="frozen", train=[], epochs=0)],
        "heads": [heads],
        "full": [
            StageConfig(
                name="full", train=["all"], epochs=4, lr={"heads": 3e-2, "encoder": 3e-5}, early_stopping=PLATEAU
            )
        ],
        "progressive": [
            heads,
            StageConfig(
                name="top",
                train=["heads", "projection", f"layers[-{top}:]"],
                epochs=2,
                lr={"heads": 5e-4, "encoder": 5e-5},
                early_stopping=PLATEAU,
            ),
            discriminative,
            StageConfig(
                name="full",
                train=["all"],
                epochs=1,
                lr={"heads": 1e-4, "encoder": 1e-5},
                early_stopping=PLATEAU,
                optional=True,
            ),
        ],
        # Heads first, as in progressive; then rank-16 adapters on the attention queries and values of the top half
        # (MiniLM: 74k adapter parameters), merged at the stage's end; the discriminative stage only with --full.
        "lora": [
            heads,
            StageConfig(
                name="lora",
                train=["heads", "projection"],
                epochs=3,
                lr={"heads": 5e-4, "encoder": 5e-4},
                lora=LoraSettings(r=16, alpha=32, dropout=0.05, layers=f"layers[-{half}:]", targets=["query", "value"]),
                early_stopping=PLATEAU,
            ),
            discriminative.model_copy(update={"optional": True}),
        ],
        # SetFit's recipe for few-shot classification (docs/benchmarks.md, "Few-shot against SetFit"): the whole encoder
        # trained by the tasks' pair loss alone (classification tasks that set none get 1), at SetFit's body rate,
        # then heads from the centroids of the trained encoder. 60 epochs: 120 updates on 8 TREC questions per class
        # (0.782 against progressive's 0.681); a long stage on thousands of rows.
        "pairs": [
            StageConfig(name="pairs", train=["encoder", "projection"], epochs=60, lr={"encoder": 2e-5}, warmup=0.1,
                        task_loss=False, restore_best=False, pair_loss=1.0),
            heads,
        ],
    }
    assert tuple(stages) == PRESETS
    if name not in stages:
        raise ConfigError(f"schedule: unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    return token_budget(stages[name]) if token_only else stages[name]


TOKEN_EPOCHS = 20  # the encoder stages' epochs for a run of token tasks alone (`token_budget`; tune's default space)
PLATEAU = EarlyStopping(patience=2, min_delta=0.001)  # every preset stage's stop on a plateau of the dev score
TOKEN_PLATEAU = EarlyStopping(patience=5, min_delta=0.001)  # `token_budget`'s stages (a tagger's dev F1 swings)


def plateau(config: RunConfig) -> EarlyStopping:
    """The plateau stop the presets give the config's run (`thawing tune`'s trials get the same)."""
    return TOKEN_PLATEAU if token_only(config) else PLATEAU


def token_only(config: RunConfig) -> bool:
    """Every task of the run tags tokens: such a run gets a token task's budget (`token_budget`)."""
    return all(task.type == "token-classification" for task in config.tasks.values())


def token_budget(stages: list[StageConfig]) -> list[StageConfig]:
    """A preset's `full` and `discriminative` stages as a token task needs them. The presets were chosen on sentence
    tasks, where a few epochs suffice; on CoNLL (600 sentences, MiniLM) they ended 17 points of entity F1 below a
    Hugging Face Trainer tuned on dev. With this budget (docs/benchmarks.md, "A plan for token tasks"; 3 seeds) `full`
    reaches 0.771 (0.584 before; heads at 1e-3, since 3e-2 moves a tag head too far each step once the encoder
    trains) and `progressive` 0.728 (0.596). Dev F1 swings by 2-5 points from epoch to epoch there, so the plateau
    waits 5 evaluations, not 2."""
    changes = {
        "full": {"epochs": TOKEN_EPOCHS, "lr": StageRates(heads=1e-3, encoder=1e-4), "warmup": 0.1,
                 "early_stopping": TOKEN_PLATEAU},
        "discriminative": {"epochs": TOKEN_EPOCHS, "early_stopping": TOKEN_PLATEAU},
    }
    return [s.model_copy(update=changes[s.name]) if s.name in changes and not s.optional else s for s in stages]


def stage_configs(config: RunConfig, num_layers: int) -> list[StageConfig]:
    """The stage list the config asks for, before resolution."""
    if isinstance(config.schedule, str):
        return command_line_over_preset(preset(config.schedule, num_layers, token_only(config)), config)
    if config.schedule is not None:
        return list(config.schedule)
    name = "frozen" if "all" in config.freeze else "train"
    return [
        StageConfig(
            name=name,
            train=["all"] + [f"-{f}" for f in config.freeze],
            epochs=0 if name == "frozen" else config.train.epochs,
        )
    ]


def command_line_over_preset(stages: list[StageConfig], config: RunConfig) -> list[StageConfig]:
    """A preset's stages with `train.epochs` and `train.lr.*` applied to every stage, where the config (or `--set`)
    sets them: a preset names its own epochs and rates, which would otherwise silently win."""
    train = config.train
    epochs = {"epochs": train.epochs} if "epochs" in train.model_fields_set else {}
    rates = {k: getattr(train.lr, k) for k in train.lr.model_fields_set} if "lr" in train.model_fields_set else {}
    out = []
    for stage in stages:
        lr = stage.lr.model_copy(update={k: v for k, v in rates.items() if k in StageRates.model_fields})
        out.append(
            stage.model_copy(update={**({"epochs": epochs["epochs"]} if epochs and stage.epochs else {}), "lr": lr})
        )
    return out


def group_rates(
    trainable: list[str], groups: OrderedDict[str, list], cfg: StageConfig, config: RunConfig
) -> dict[str, float]:
    """Learning rate of every trainable group: heads, projection, and encoder groups with layer decay.

    The top trainable layer (and the final norm above it) gets the encoder rate; each trainable
    layer below gets `layer_decay` times the one above; embeddings sit one step below the lowest.
    A layer's LoRA adapters (`lora:layers.i`) count as that layer training and get its rate.
    """
    heads = cfg.lr.heads or config.train.lr.heads
    projection = cfg.lr.projection or config.train.lr.projection or heads
    encoder = cfg.lr.encoder or config.train.lr.encoder
    adapted = {g.removeprefix("lora:") for g in trainable if g.startswith("lora:")}
    ladder = [g for g in ["embeddings"] + layer_names(groups) if g in trainable or g in adapted]
    rates = layer_learning_rates(ladder, encoder, cfg.layer_decay) if ladder else {}
    out = {}
    for group in trainable:
        if group.startswith("head:"):
            out[group] = heads
        elif group == "projection":
            out[group] = projection
        elif group.startswith("lora:"):
            out[group] = rates[group.removeprefix("lora:")]
        elif group in rates:
            out[group] = rates[group]
        else:  # norm, pooler: they sit on top of the stack
            out[group] = encoder
    return out



def pair_weights(stage: Stage, config: RunConfig) -> dict[str, float]:
    """Each task's pair-loss weight in `stage`: its own `pair_loss`, else the stage's for the task types a pair loss
    applies to (one label per sentence: classification); tasks at 0 are left out."""
    from thawing.task_types import task_type

    weights = {task: cfg.pair_loss or (stage.pair_loss if task_type(cfg.type).pairs else 0.0) or 0.0
               for task, cfg in config.tasks.items()}
    return {task: weight for task, weight in weights.items() if weight}

def encoder_only_tasks(config: RunConfig) -> list[str]:
    """The tasks with no head (similarity, retrieval): only the encoder (and a projection) trains by them."""
    from thawing.task_types import task_type

    return [task for task, cfg in config.tasks.items()
            if task_type(cfg.type).reads == "pairs" and not task_type(cfg.type).has_head]


def check_encoder_only(plan: list[Stage], tasks: list[str]) -> None:
    """A task with no head (`tasks`, from `encoder_only_tasks`) trains only where the encoder or projection does: a
    plan that trains, but never those, would carry such a task along for nothing.

    Raises:
        ConfigError: naming the tasks and what to do.
    """
    trains = [s for s in plan if s.epochs > 0 and s.trainable]
    meant = trains or any(s.skips for s in plan)  # a plan meant to train (not `frozen`)
    if tasks and meant and all(encoder_frozen(s.trainable) for s in trains):
        raise ConfigError(f"schedule: task(s) {', '.join(tasks)} have no head: only the encoder (or a projection) "
                          "trains by them, and no stage of this plan trains either; train the encoder in a stage "
                          "(e.g. schedule: full or progressive), or leave the task(s) out")


def build_plan(config: RunConfig, groups: OrderedDict[str, list], run_optional: bool | None = None,
               model: nn.Module | None = None) -> list[Stage]:
    """Resolve the config's stages against the model's groups. Optional stages run only when asked. `model` (the
    multi-task model or its encoder, plain) is needed to resolve a stage's `lora` targets."""
    run_optional = config.run_optional if run_optional is None else run_optional
    plan = []
    headless = encoder_only_tasks(config)
    for cfg in stage_configs(config, len(layer_names(groups))):
        try:
            trainable = select_groups(cfg.train, groups) if cfg.train else []
            adapters = _adapters(cfg.lora, model, groups) if cfg.lora else None
        except ConfigError as exc:
            raise ConfigError(f"schedule: stage '{cfg.name}': {exc}") from None
        selects_nothing = bool(cfg.train) and not trainable and cfg.epochs > 0
        # Every task without a head: a heads stage (progressive's first) has nothing to train, and is skipped.
        skipped = selects_nothing and len(headless) == len(config.tasks)
        if selects_nothing and not skipped:
            raise ConfigError(f"schedule: stage '{cfg.name}' trains {cfg.train}, which selects no parameter of this "
                              "model; give train: [] (or freeze: [all]) for a stage that trains nothing")
        trainable += adapters.groups if adapters else []
        stage = Stage(
            name=cfg.name,
            trainable=trainable,
            lrs=group_rates(trainable, groups, cfg, config),
            epochs=0 if skipped else cfg.epochs,
            warmup=config.train.warmup if cfg.warmup is None else cfg.warmup,
            lr_schedule=cfg.lr_schedule or config.train.lr_schedule,
            eval_every=cfg.eval_every or config.train.eval_every,
            patience=cfg.early_stopping.patience,
            min_delta=cfg.early_stopping.min_delta,
            metric=cfg.early_stopping.metric or config.selection_metric,
            restore_best=cfg.restore_best,
            optional=cfg.optional,
            retain=cfg.retain if cfg.retain is not None else config.retain,
            lora=adapters,
            task_loss=cfg.task_loss,
            pair_loss=cfg.pair_loss,
            skips=() if not encoder_frozen(trainable) or cfg.epochs == 0 else tuple(headless),
        )
        if not cfg.task_loss and not distills(stage.retain) and not pair_weights(stage, config):
            raise ConfigError(f"schedule: stage '{cfg.name}' has task_loss: false but no other loss to train by; give "
                              "a classification task pair_loss (the stage's pair_loss, for classification tasks), or "
                              "the stage retain.distill")
        if not cfg.task_loss and encoder_frozen(trainable):  # the added losses act on the encoder's embeddings
            raise ConfigError(f"schedule: stage '{cfg.name}' has task_loss: false but trains only heads, which "
                              "nothing would train; train the encoder (or a projection) in it")
        if not stage.optional or run_optional:
            plan.append(stage)
    if not plan:
        raise ConfigError("schedule: no stage to run (all are optional; pass --full or run_optional: true)")
    check_encoder_only(plan, headless)
    return plan


def _adapters(settings: LoraSettings, model: nn.Module | None, groups: OrderedDict[str, list]) -> AdapterPlan:
    if model is None:
        raise TypeError("build_plan needs the model to resolve a stage's lora targets")
    encoder = getattr(model, "encoder", model)
    return plan_adapters(settings, encoder.backbone, groups)


def stage_optimizer(stage: Stage, groups: OrderedDict[str, list], weight_decay: float) -> torch.optim.Optimizer:
    """A fresh AdamW over exactly the stage's trainable groups, one param group per named group at its own rate
    (`initial_lr`, which the loop scales by the schedule every update)."""
    params = [p for g in stage.trainable for _, p in groups[g]]  # with a LoRA stage's adapters attached
    return torch.optim.AdamW(
        [
            {"params": [p for _, p in groups[g]], "lr": stage.lrs[g], "initial_lr": stage.lrs[g], "name": g}
            for g in stage.trainable
        ],
        weight_decay=weight_decay,
        # One kernel for all parameters: the step over a 1.5B model's fp32 states is memory-bound on a GPU, and the
        # default (foreach) makes several passes over them. Fused, the step also takes a non-finite update's mark
        # on the device (stepping.Replicated.step), where foreach would need the host to read it.
        fused=all(p.device.type in FUSED_DEVICES for p in params) or None,
    )


def group_sizes(stage: Stage, groups: OrderedDict[str, list]) -> dict[str, int]:
    """Parameters per trainable group of `stage`, its adapters included (attached or not)."""
    sizes = {g: sum(p.numel() for _, p in groups[g]) for g in stage.trainable if g in groups}
    return {g: sizes[g] if g in sizes else stage.lora.params[g] for g in stage.trainable}  # type: ignore[union-attr]


def trainable_params(stage: Stage, groups: OrderedDict[str, list]) -> int:
    return sum(group_sizes(stage, groups).values())


def plan_summary(plan: list[Stage], groups: OrderedDict[str, list]) -> dict:
    """The JSON form of `thawing plan --json`: per stage its groups (count, rate) and its adapters, if any."""
    stages = []
    for stage in plan:
        sizes = group_sizes(stage, groups)
        stages.append({
            "name": stage.name,
            "epochs": stage.epochs,
            "patience": stage.patience,
            "trainable_params": sum(sizes.values()),
            "groups": [{"name": g, "params": sizes[g], "lr": stage.lrs[g]} for g in stage.trainable],
            "retain": stage.retain.model_dump(exclude_none=True) if stage.retain else None,
            **({"lora": stage.lora.to_json()} if stage.lora else {}),
            **({"task_loss": False} if not stage.task_loss else {}),
            **({"skips": list(stage.skips)} if stage.skips else {}),
        })
    return {"stages": stages}
