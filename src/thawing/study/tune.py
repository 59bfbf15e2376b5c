"""`thawing tune`: search freezing plans for the config's tasks on Optuna, one training run per trial.

Each trial samples a plan (`tune_space.py`), trains it with the config's tasks, data and model in
`<tune>/trials/trial-<n>/` (dev only: the test split is left out, and no checkpoints). At every dev evaluation of a
stage that trains the encoder it reports its best dev score so far to the trial (the step is that evaluation's count;
a heads-only stage reports nothing, see `StageMeter`), so a pruner (median, Hyperband) stops a trial that cannot win
within a stage, not only between stages; a pruned run never writes final/. The objectives: the dev selection score
(always, maximized), and on demand the stages' wall time, a device-independent cost (trained examples x trainable
parameters, summed over stages) and the retention of the config's probes. One objective: TPE with pruning. Several:
TPE's multi-objective form, whose result is a Pareto front; Optuna prunes no multi-objective study. A new study's
first trials are the `full` and `progressive` presets (`tune.start`; `tune_space.preset_params`), so the search
starts from the plans a user would run without it.

The study lives in Optuna storage: a journal file in the tune directory by default (several processes on one
machine share it), or the database `storage` names (an RDB URL: workers on many machines). `resume` continues a
study (a killed process's running trials are marked failed, and run again as new trials) or joins one from another
process; `trials` counts the finished (completed or pruned) trials of the whole study. At the end, only the chosen
trials (the best one, or the fastest within `tune.tolerance` of it; with several objectives, the Pareto front) keep
final/, each scored once on the test split, and `tune_report.py` writes tune.json, best_plan.yaml and the report.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thawing.config import RunConfig, StageConfig, TuneConfig, TuneSpace, parse_config
from thawing.errors import ConfigError, InputError, Interrupted, NonFiniteError
from thawing.store.run_dir import RunDir
from thawing.study.tune_report import write_outputs
from thawing.study.tune_space import corner_params, preset_params, suggest_plan
from thawing.study.tune_storage import open_study, open_tune_dir, owner
from thawing.training.events import Callback, Evaluated, ScenarioStarted, StageEnded, StageStarted, UpdateDone


def optuna_module() -> Any:
    try:
        import optuna
    except ImportError:
        raise InputError("thawing tune needs Optuna: pip install 'thawing[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # thawing reports progress; Optuna's lines repeat it
    return optuna


def run_tune(config: RunConfig, tune_dir: str | Path | None = None, *, trials: int | None = None,
             timeout: float | None = None, objectives: list[str] | None = None, storage: str | None = None,
             study_name: str | None = None, resume: bool = False, callbacks: Sequence[Callback] = (),
             pruner: Any = None) -> RunDir:
    """Search plans for `config` (its `tune:` settings, overridden by the arguments); returns the tune directory
    (default runs/<name>-tune). `pruner`: an Optuna pruner instead of `tune.pruner`'s.

    Raises:
        InputError: a new study on a tune directory that holds one (without `resume`), `resume` with none to continue,
            a config that differs from the study's, a storage that cannot be opened.
        ConfigError: a search space that does not fit the model (checked on every shape before anything trains).
    """
    optuna = optuna_module()
    config = with_tune(config, trials, timeout, objectives)
    settings: TuneConfig = config.tune  # type: ignore[assignment]
    tune = RunDir(tune_dir or Path("runs") / f"{config.name}-tune")
    num_layers, starts = check_space(config, settings)
    open_tune_dir(tune, config, resume)
    study = open_study(optuna, tune, config, settings, storage, study_name or config.name, resume, pruner)
    if not resume:
        for name, params in starts.items():
            study.enqueue_trial(params, user_attrs={"start": name}, skip_if_exists=True)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    left = settings.trials - len(study.get_trials(deepcopy=False, states=finished))
    if left > 0:
        objective = Objective(optuna, config, tune, num_layers, settings, list(callbacks))
        try:
            study.optimize(objective, n_trials=left, timeout=settings.timeout, catch=(NonFiniteError,),
                           callbacks=[optuna.study.MaxTrialsCallback(settings.trials, states=finished)])
        except Interrupted as exc:  # SIGINT, SIGTERM: Optuna failed the trial under way; what finished is written
            write_outputs(tune, study, config, *keep_chosen(study, tune, config))
            number = exc.exit_code - 128
            raise Interrupted(f"{signal.Signals(number).name}: the tune stopped; the trial under way failed, and "
                              "runs again as a new trial. Resume with: thawing tune CONFIG --tune-dir "
                              f"{tune.path} --resume", number) from None
    write_outputs(tune, study, config, *keep_chosen(study, tune, config))
    return tune


def with_tune(config: RunConfig, trials: int | None, timeout: float | None, objectives: list[str] | None
              ) -> RunConfig:
    """The config with its `tune:` settings (defaults where it has none) and the command line's, validated whole (a
    retention objective needs a probe)."""
    raw = config.model_dump(mode="json", exclude_unset=True)
    tune = raw.get("tune") or {}
    tune.update({k: v for k, v in (("trials", trials), ("timeout", timeout), ("objectives", objectives))
                 if v is not None})
    from thawing.training.stages import TOKEN_EPOCHS, plateau, token_only  # torch: not at `thawing tune --help`

    space = tune["space"] = tune.get("space") or {}
    # the trials stop on a plateau as the presets' stages do (patience 5 for a run of token tasks alone, 2 otherwise)
    space.setdefault("early_stopping", plateau(config).model_dump(mode="json"))
    if token_only(config) and "epochs" not in space:
        # as the presets give such a run (training/stages.py token_budget): the default space's 4 epochs cannot reach
        # what a tagger needs (CoNLL, 600 sentences: 0.58 entity F1 after 4 epochs of full, 0.77 after 20)
        space["epochs"] = TuneSpace().epochs | {"discriminative": (1, TOKEN_EPOCHS), "full": (1, TOKEN_EPOCHS)}
    raw["tune"] = tune
    return parse_config(raw, source="tune")


def trial_config(config: RunConfig, stages: list[StageConfig]) -> RunConfig:
    """A trial's config: the stages it tries, no test split (trials are chosen on dev; the test split is scored once,
    for the chosen ones), no checkpoints (a trial cut short runs again as a new trial) and no `tune:`."""
    raw = config.model_dump(mode="json", exclude_unset=True)
    raw.pop("tune", None)
    raw["schedule"] = [s.model_dump(mode="json", exclude_unset=True) for s in stages]
    raw["run_optional"] = False
    raw.setdefault("train", {})["checkpoint"] = False
    for task in raw["tasks"].values():
        task["data"]["test"] = None
        task.get("limit", {}).pop("test", None)
    return parse_config(raw, source="tune trial")


def check_space(config: RunConfig, settings: TuneConfig) -> tuple[int, dict[str, dict]]:
    """Every shape's plan resolved against the model (its knobs at both ends of their ranges), before anything
    trains; returns the model's layer count and the start presets' params (`tune.start`).

    Raises:
        ConfigError: a shape's plan that does not fit the model; a start preset whose shape the space lacks.
    """
    from optuna.trial import FixedTrial

    from thawing.config.tasks import load_tasks
    from thawing.model.freezing import layer_names, select_groups
    from thawing.model.groups import parameter_groups
    from thawing.model.loading import load_encoder
    from thawing.training.setup import build_model
    from thawing.training.stages import build_plan, preset, token_only

    m = config.model
    encoder = load_encoder(m.name, max_length=m.max_length, pooling=m.pooling, normalize=m.normalize,
                           trust_remote_code=m.trust_remote_code, weights=False)
    tasks = load_tasks(config.tasks, seed=config.train.seed, small=config.train.small_data)
    model = build_model(config, tasks, encoder)
    groups = parameter_groups(model)
    num_layers = len(layer_names(groups))
    for shape in settings.space.shapes:
        for high in (False, True):
            params = corner_params(settings.space, num_layers, settings.objectives, list(shape), high)
            try:
                stages = suggest_plan(FixedTrial(params), settings.space, num_layers, settings.objectives)
                build_plan(trial_config(config, stages), groups, False, model)
            except ConfigError as exc:
                raise ConfigError(f"tune.space.shapes: {'+'.join(shape)}: {exc}") from None
    layers = set(layer_names(groups))
    starts: dict[str, dict] = {}
    for name in settings.start if settings.start is not None else ("full", "progressive"):
        params = preset_params(preset(name, num_layers, token_only(config)), settings.space, num_layers,
                               settings.objectives, config.train.warmup,
                               lambda train: len(layers.intersection(select_groups(train, groups))))
        if params["shape"].split("+") in settings.space.shapes:
            starts[name] = params
        elif settings.start is not None:
            raise ConfigError(f"tune.start: {name}: its stages {params['shape']} are not among tune.space.shapes")
    return num_layers, starts


class Objective:
    """One trial: a plan sampled, trained, measured."""

    def __init__(self, optuna: Any, config: RunConfig, tune: RunDir, num_layers: int, settings: TuneConfig,
                 callbacks: list[Callback]):
        self.optuna, self.config, self.tune, self.num_layers = optuna, config, tune, num_layers
        self.settings, self.callbacks = settings, callbacks

    def __call__(self, trial: Any) -> tuple[float, ...]:
        from thawing.training.loop import train

        objectives = self.settings.objectives
        stages = suggest_plan(trial, self.settings.space, self.num_layers, objectives)
        run_dir = self.tune.trial_dir(trial.number)
        trial.set_user_attr("owner", owner())
        trial.set_user_attr("run", str(run_dir.relative_to(self.tune.path)))
        trial.set_user_attr("plan", [s.model_dump(mode="json", exclude_unset=True) for s in stages])
        for callback in self.callbacks:
            callback(ScenarioStarted(f"trial {trial.number}: {trial.params['shape']}"))
        meter = StageMeter(trial, self.optuna, prune=len(objectives) == 1)
        started = time.perf_counter()
        try:
            run = train(trial_config(self.config, stages), run_dir=str(run_dir), callbacks=[meter, *self.callbacks])
        finally:
            trial.set_user_attr("wall_s", round(time.perf_counter() - started, 2))
            trial.set_user_attr("stage_s", round(meter.stage_s, 2))
            trial.set_user_attr("cost", meter.cost)
        results = run.read_json(run.results)
        values = {"score": lambda: results["score"], "time": lambda: meter.stage_s,
                  "cost": lambda: float(meter.cost), "retention": lambda: retention(results)}
        trial.set_user_attr("dev", results["tasks"])
        return tuple(values[o]() for o in objectives)


class StageMeter:
    """The training callback of a trial: stage time and cost, and the best dev score so far reported at every dev
    evaluation of a stage that trains the encoder (the step is that evaluation's count in the trial), pruning where
    the pruner says so: a trial whose stage cannot win stops at that evaluation, not at the stage's end. Steps count
    evaluations rather than updates so that plans of different stages and batch counts meet at comparable points
    (each evaluation ends an epoch or `eval_every` updates).

    A stage that leaves the encoder frozen (heads on cached features: seconds) reports nothing, nor does the
    evaluation of a stage's start (heads from their centroids, before any update). Were they steps, a plan would be
    judged by a score no training of its encoder made, against plans whose encoder had trained at the same step: in
    a 30-trial tune of TREC fine + AG News (docs/benchmarks.md) the median pruner stopped all 8 staged plans
    proposed after the startup trials within a second of their heads stage; with heads stages left out but the
    start counted, it stopped 10 of the first 17 trials, `full` plans all, at their start."""

    def __init__(self, trial: Any, optuna: Any, prune: bool):
        self.trial, self.optuna, self.prune = trial, optuna, prune
        self.stage_s, self.cost, self.examples, self.evaluations = 0.0, 0, 0, 0
        self.best, self.reports, self.started = float("-inf"), False, 0.0

    def __call__(self, event: Any) -> None:
        if isinstance(event, StageStarted):
            from thawing.model.freezing import encoder_frozen  # torch: not at `thawing tune --help`

            self.reports = not encoder_frozen([g["group"] for g in event.groups if g["trainable"]])
            self.started = time.perf_counter()
        elif isinstance(event, UpdateDone):
            self.examples += event.examples
        elif isinstance(event, Evaluated) and event.split == "dev":
            self.best = max(self.best, event.score)
            if self.prune and self.reports and event.epoch > 0:  # not a stage's start, evaluated before it trains
                self.evaluations += 1
                self.trial.report(self.best, self.evaluations)
                if self.trial.should_prune():
                    self.stage_s += time.perf_counter() - self.started  # the stage cut short counts to where it stopped
                    raise self.optuna.TrialPruned(f"stage {event.stage}, evaluation {self.evaluations}: best dev "
                                                  f"score {self.best:.4f} cannot win")
        elif isinstance(event, StageEnded):
            self.stage_s += event.summary.get("wall_s", 0.0)
            self.cost += self.examples * event.summary.get("trainable_params", 0)
            self.examples = 0


def retention(results: dict) -> float:
    """The mean retention (value over pretrained value) of the run's similarity and transfer probes."""
    values = [v for probe in (results.get("probes") or {}).values() for k, v in probe.items()
              if k.endswith("_retention") and isinstance(v, (int, float))]
    if not values:
        raise InputError("the retention objective found no probe retention in the trial's results")
    return sum(values) / len(values)


def keep_chosen(study: Any, tune: RunDir, config: RunConfig) -> tuple[list[int], int | None]:
    """The chosen trials (one objective: `choose`'s; several: the Pareto front), each scored once on the test split;
    every other finished trial's final/ removed (a copy of the model each). Returns the chosen trials' numbers and
    the one whose plan is written out (`choose`'s among them; None before any trial completed)."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return [], None
    tolerance = config.tune.tolerance if config.tune else 0.0
    pareto = len(study.directions) > 1
    candidates = sorted(study.best_trials, key=lambda t: t.number) if pareto else done
    plan = choose(candidates, tolerance)
    chosen = candidates if pareto else [plan]
    numbers = [t.number for t in chosen]
    for trial in study.get_trials(deepcopy=False):
        run = RunDir(tune.path / trial.user_attrs.get("run", f"missing-{trial.number}"))
        if trial.number in numbers:
            if not run.trial_test.is_file() and run.final.is_dir():
                run.write_json(run.trial_test, score_test(run, config))
        elif trial.state != optuna.trial.TrialState.RUNNING:
            shutil.rmtree(run.final, ignore_errors=True)
    return numbers, plan.number


def choose(trials: list, tolerance: float) -> Any:
    """The trial whose plan is chosen among completed `trials` (all of them with one objective, the Pareto front with
    several): the best dev score (`tolerance` 0), else the fastest (least stage time) of those whose dev score is
    within `tolerance` of the best; the earlier trial on a tie."""
    floor = max(t.values[0] for t in trials) - tolerance - 1e-12  # a score exactly `tolerance` below the best is near
    near = [t for t in trials if t.values[0] >= floor]
    if not tolerance:
        return min(near, key=lambda t: t.number)
    return min(near, key=lambda t: (t.user_attrs.get("stage_s", float("inf")), t.number))


def score_test(run: RunDir, config: RunConfig) -> dict:
    """A chosen trial's final model on each task's test split (from the tune's config: trials have none); tasks
    without a test split are left out, and the selection score is given only when every task has one."""
    from thawing.model.inference import featurize, score, split_examples, task_logits
    from thawing.model.loading import load_encoder
    from thawing.model.multitask import MultiTaskModel, TaskSpec
    from thawing.model.runtime import resolve
    from thawing.task_types.metrics import selection_score

    specs = {task: TaskSpec(**spec) for task, spec in run.read_json(run.tasks).items()}
    run.verify_final({task: spec.labels for task, spec in specs.items()})
    encoder = load_encoder(str(run.encoder_dir), trust_remote_code=config.model.trust_remote_code)
    model = MultiTaskModel(encoder, specs)
    model.heads.load_state_dict(run.load_heads_state())
    runtime = resolve(encoder, device=config.train.device, precision=config.train.mixed_precision, packing_=False,
                      training=False)
    model.to(runtime.device)
    tasks = {}
    for task, spec in specs.items():
        examples = split_examples(config, task, spec.labels, "test")
        if examples:
            logits = task_logits(model, task, featurize(model, task, examples), config.train.eval_batch_size,
                                 runtime.inference_max_tokens)
            tasks[task] = score(spec, logits, [e.label for e in examples])
    whole = set(tasks) == set(specs)
    return {"tasks": tasks,
            "score": selection_score(tasks, run.primary_metrics(), config.selection_metric) if whole else None}
