"""The training loop: runs a stage plan over a multi-task model. The only loop in thawing.

`train(config)` prepares everything (input errors surface before a run directory exists) and resolves the runtime
once; then, for each stage, `run_stage` sets what trains, prepares a fresh optimizer through accelerate, steps
through task-sampled updates, evaluates, and stops on a plateau with the stage's best weights. The plan stops when a
stage does not beat the best score so far. Checkpoints follow every stage and, inside a stage, every
`train.checkpoint_every` updates or minutes and on SIGINT/SIGTERM. A LoRA stage attaches its adapters before it starts
and merges them once the plan has decided on it, so checkpoints between stages and the final model are plain. A run
whose dev split is too small to choose by adapts its plan once (training/small_data.py); heads start from their class
centroids (training/head_start.py).
Progress goes to the callbacks, as typed events (training/events.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from thawing import distributed
from thawing.config import RunConfig, load_config
from thawing.errors import InputError
from thawing.model import lora
from thawing.model.encoder import Encoder
from thawing.model.freezing import active_tasks, apply_trainable, layer_names, parameter_table, set_frozen_modes
from thawing.model.groups import parameter_groups
from thawing.model.runtime import make_accelerator, resolve_for_training
from thawing.store import metric_lines
from thawing.store.run_dir import RunDir
from thawing.training import checkpoint, contract, head_start, signals, small_data
from thawing.training.checkpoint import StageProgress, TrainState
from thawing.training.context import Context
from thawing.training.evaluation import evaluate, finish
from thawing.training.events import CacheNote, Callback, PlanStopped, StageEnded, StageStarted, UpdateDone, fan_out
from thawing.training.numerics import TrainingRecords, named_params
from thawing.training.paths import centroid_heads, choose_path
from thawing.training.plateau import Plateau
from thawing.training.probes import build_probes
from thawing.training.retain import pretrained_side
from thawing.training.schedule import lr_multiplier, warmup_steps
from thawing.training.setup import prepare
from thawing.training.signals import stop_requests
from thawing.training.stages import Stage, build_plan, stage_configs, trainable_params
from thawing.training.stepping import fsdp_settings, prepare_stepping
from thawing.training.stepping import mode as stepping_mode
from thawing.training.tracking import Trackers, check_available, closing
from thawing.training.update import one_update, stage_losses
from thawing.training.updates import StagePlan

log = logging.getLogger(__name__)


def train(config: RunConfig, run_dir: str | None = None, callbacks: Sequence[Callback] = (),
          run_optional: bool | None = None, encoder: Encoder | None = None, resume: str | Path | None = None,
          allow_config_change: Sequence[str] = ()) -> RunDir:
    """Train per the config's plan and write a complete run directory. Returns it.

    `encoder` replaces loading `config.model.name` (e.g. a model built in memory). `resume` continues the run
    directory of a run that stopped, from its last checkpoint (see `resume_run`); `allow_config_change`: the keys its
    config.yaml may have changed since (training/contract.py).
    """
    try:
        run = _train(config, run_dir, callbacks, run_optional, encoder, resume, allow_config_change)
    except BaseException:
        distributed.leave(finished=False)
        raise
    distributed.leave(finished=True)
    return run


def _train(config: RunConfig, run_dir: str | None, callbacks: Sequence[Callback], run_optional: bool | None,
           encoder: Encoder | None, resume: str | Path | None, allow: Sequence[str]) -> RunDir:
    ctx, plan, groups = start(config, run_dir, callbacks, run_optional, encoder, resume, allow)
    state, run = ctx.state, ctx.run
    with ctx.lock, stop_requests(run.path, run.checkpoints) as ctx.stop, closing(ctx.trackers):
        if not state.probes:  # the pretrained encoder's values (a resumed run has them logged already)
            ctx.probe(metric_lines.START, groups)
        for stage in plan[state.stages_done :] if not state.plan_stopped else []:
            # A LoRA stage's adapters exist before its parameters are listed and a stage checkpoint loads into them.
            adapters = lora.attach(ctx.model.encoder.backbone, stage.lora, config.train.seed + state.stages_done
                                   ) if stage.lora else None
            stage_groups = parameter_groups(ctx.model) if adapters is not None else groups
            params = [p for g in stage.trainable for _, p in stage_groups[g]]
            inside = checkpoint.stage_tensors(run, ctx.model) if state.stage else None  # resuming inside this stage
            begin = inside[1] if inside else checkpoint.snapshot(params)  # put back if the stage loses to the plan
            summary = run_stage(ctx, stage, stage_groups, params, begin, inside)
            beaten = state.best.update(summary["best_score"], min_delta=stage.min_delta)  # the plan's plateau
            if not beaten and stage.stops_plan:  # not on a dev split too small to judge by (training/small_data.py)
                checkpoint.put_back(params, begin)
                summary["stopped"] += "; plan stopped: stage did not beat the best so far"
                ctx.events(PlanStopped(stage.name, summary["best_score"], state.best.best))
                state.plan_stopped = True
            if adapters is not None:  # after the stage's and the plan's decisions: from here on, a plain model
                kept = not state.plan_stopped  # put back, the adapters are at their start (zero): dropped
                lora.detach(adapters, merge=kept)
                summary["lora"]["merged"] = kept
            ctx.probe(stage.name, groups)
            state.summaries.append(summary)
            state.stages_done += 1
            state.heads = {t: spec.head for t, spec in ctx.model.specs.items()}
            rng = checkpoint.rng_states() if config.train.checkpoint else None  # every process's
            if ctx.main:  # the others hold the same model and state, and write nothing
                state.metrics_lines = run.metrics_lines()
                run.write_json(run.stages, state.summaries)
                if config.train.checkpoint:
                    checkpoint.save(run, ctx.model, state, rng)
            agreed_stop(ctx)
            if ctx.stop.requested:  # the last stage too: finishing (test split, final/, report) is left to --resume
                raise signals.interrupted(ctx, stage)
            if state.plan_stopped:
                break
        finish(ctx)
    return run


def start(config: RunConfig, run_dir: str | None = None, callbacks: Sequence[Callback] = (),
          run_optional: bool | None = None, encoder: Encoder | None = None, resume: str | Path | None = None,
          allow_config_change: Sequence[str] = ()) -> tuple[Context, list[Stage], dict]:
    """Everything before the first stage: data, model and plan (input errors surface before a run directory exists),
    the runtime, the run directory (new, or the stopped one with its checkpoint restored). Returns the run's context,
    its plan and the model's parameter groups."""
    processes = distributed.init(config.train.device)  # several: before the model moves to this process's device
    main = distributed.is_main()
    # A stopped run is taken (its lock) before anything reads it: reading its checkpoint may repair it after a kill
    # mid-swap, which must never happen under a live run. A new run's directory is made, and taken, further down.
    lock = RunDir(resume).lock() if resume and main else None
    try:
        return _start(config, run_dir, callbacks, run_optional, encoder, resume, processes, main, lock,
                      allow_config_change)
    except BaseException:
        if lock is not None:
            lock.close()
        raise


def _start(config: RunConfig, run_dir: str | None, callbacks: Sequence[Callback], run_optional: bool | None,
           encoder: Encoder | None, resume: str | Path | None, processes: int, main: bool, lock,
           allow: Sequence[str]) -> tuple[Context, list[Stage], dict]:
    # The main process reads (and, after a kill mid-swap, repairs) the checkpoint; the others take its reading.
    resumed = distributed.agree(checkpoint.read_state(RunDir(resume)) if resume and main else None)
    if resume and main:  # the config it started with, or the changes allowed: before anything loads
        contract.check(RunDir(resume), config, list(allow), resumed.step if resumed else 0)
    if resumed:  # the plan must be the one the checkpoint was taken in
        run_optional = resumed.run_optional
    if not resume and main:  # a run directory that cannot be made fails now, not after the data and model load
        RunDir.check_creatable(run_dir)
    check_available(config.train.report_to)  # a tracker's missing package, before anything is written
    prep = prepare(config, encoder)
    groups = parameter_groups(prep.model)
    plan = build_plan(config, groups, run_optional, prep.model)  # selector and target errors: before the run dir
    fsdp = fsdp_settings(config, plan) if stepping_mode() == "fsdp" else None
    runtime = resolve_for_training(config, prep, sharded=fsdp is not None)
    plan = small_data.adapt_plan(plan, prep.features, prep.model.specs, config.train, runtime.packing is not None)
    accelerator = make_accelerator(runtime, processes)
    probes = build_probes(config, prep.model.encoder, runtime)  # probe data errors surface here too
    if probes is not None:
        probes.start(groups)  # the pretrained side, before a checkpoint is restored
    pretrained = pretrained_side(prep.model, prep.features, groups, plan, runtime, config.train.eval_batch_size)
    if config.train.checkpoint:  # before a run directory exists
        trainable = max((trainable_params(s, groups) for s in plan), default=0)
        checkpoint.disk_check(Path(resume or run_dir or "runs"), prep.model, trainable)
    run, state, config, new_lock = _open_run(config, run_dir, resume, resumed, plan, groups, prep, run_optional, main)
    lock = lock or new_lock or contextlib.nullcontext()
    if main:
        run.write_json(run.runtime, {**runtime.to_json(), "world_size": processes, "distributed": stepping_mode()})
    if probes is not None:
        probes.seconds += state.probe_seconds  # what the run before the resume spent
    # Only the main process reports progress.
    trackers = Trackers(config.train.report_to, run, config) if main and config.train.report_to else None
    ctx = Context(prep, run, runtime, accelerator, state, fan_out(list(callbacks) if main else []), lock, probes,
                  pretrained, trackers, main=main, fsdp=fsdp)
    return ctx, plan, groups


def _open_run(config: RunConfig, run_dir: str | None, resume: str | Path | None, resumed: TrainState | None,
              plan: list[Stage], groups: dict, prep, run_optional: bool | None, main: bool
              ) -> tuple[RunDir, TrainState, RunConfig, object]:
    """The run directory: the stopped one with its checkpoint restored, or a new one, taken (its lock, the main
    process's), with its config.yaml (a preset recorded as the stages it expands to). Returns it, the run's state,
    the config as recorded and a new run's lock."""
    if resume:
        run = RunDir(resume)
        state = resumed or TrainState(plan=[s.name for s in plan], run_optional=run_optional)
        if [s.name for s in plan] != state.plan:
            raise InputError(f"the plan is now {[s.name for s in plan]}, the checkpoint's was {state.plan}",
                             path=run.path)
        if resumed:
            checkpoint.restore(run, prep.model, resumed)
        if main:
            run.keep_metrics(state.metrics_lines)  # what ran after the checkpoint goes; it runs again
        for task, head in state.heads.items():  # frozen heads became centroid (linear) heads
            prep.model.specs[task].head = head
        log.info("resuming %s: %d of %d stages done, step %d", run.path, state.stages_done, len(plan), state.step)
        return run, state, config, None
    # One run directory: the main process names and makes it, the others learn its path.
    run = RunDir(distributed.agree(str(RunDir.create(config.name, run_dir).path) if main else None))
    lock = run.lock() if main else None
    if isinstance(config.schedule, str):  # the run records the stages a preset expands to, as they ran
        config = config.model_copy(update={"schedule": stage_configs(config, len(layer_names(groups)))})
    if main:
        run.write_config(config)
        contract.start(run, load_config(run.config))  # as a resume will read it back
    return run, TrainState(plan=[s.name for s in plan], run_optional=run_optional), config, lock


def run_stage(ctx: Context, stage: Stage, groups: dict, params: list, begin: list | None = None,
              inside: tuple | None = None) -> dict:
    """One stage, top to bottom: what trains, the forward path, then epochs of updates, each update accumulated over
    its micro-batches and stepped through accelerate, evaluations with plateau stopping, checkpoints; returns the
    stage summary and leaves the model in the stage's best state. `begin`: the stage's starting weights (for its
    checkpoints; default: as they are now). `inside`: a stage checkpoint's optimizer state, start and best
    snapshots, when resuming inside this stage (`state.stage` says where)."""
    started, model, cfg, state = time.perf_counter(), ctx.model, ctx.prep.config, ctx.state
    apply_trainable(groups, stage.trainable)
    active = active_tasks(model.specs, stage.trainable)
    model.train()
    set_frozen_modes(model, stage.trainable)
    path = choose_path(model, stage.trainable, ctx.prep.features, ctx.runtime, cfg, active,
                       lambda message: ctx.events(CacheNote(message)))
    stage, fresh = head_start.start_stage(path, stage, state.trained_heads, cfg.train, resumed=inside is not None)
    # After the heads' start: FSDP trains a sharded copy of the model, made here, and it must copy the started heads.
    stepping = prepare_stepping(ctx, stage, groups, params)  # the model itself, DDP-wrapped, or a sharded copy
    optimizer = stepping.optimizer if stepping else None
    ctx.events(StageStarted(stage.name, parameter_table(groups, stage.trainable), stage.lrs, path.cached))
    summary = {"stage": stage.name, "trainable_params": sum(p.numel() for p in params), "cached": path.cached,
               **path.summary, **({"lora": stage.lora.to_json()} if stage.lora else {})}
    p = state.stage = state.stage or StageProgress(evals=Plateau(min_delta=stage.min_delta, patience=stage.patience))
    if optimizer is None or stage.epochs == 0:  # nothing trains: untrained heads become centroid classifiers
        centroid_heads(path, [t for t in model.specs if t not in state.trained_heads])
        p.evals.update(evaluate(ctx, path, stage, 0.0), at=state.step)
        summary.update(epochs_run=0, updates=0, stopped="no training (frozen)")
    else:
        summary.update(train_stage(ctx, stage, path, stepping, groups, params, begin, inside, fresh, active))
    if stepping is not None:
        stepping.release()  # FSDP: the sharded copy dropped (its weights were pulled into the model)
    ctx.accelerator.free_memory()  # accelerate lets go of this stage's optimizer (its Adam moments)
    summary.update(best_score=p.evals.best, best_step=state.step if p.evals.best_at is None else p.evals.best_at,
                   wall_s=round(time.perf_counter() - started, 2))
    state.stage = None
    ctx.events(StageEnded(stage.name, summary))
    return summary


def train_stage(ctx: Context, stage: Stage, path, stepping, groups: dict, params: list, begin: list | None,
                inside: tuple | None, fresh: list[str], active: list[str]) -> dict:
    """A stage's updates, on the path and optimizer `run_stage` set up: epochs of task-sampled updates, evaluations
    with plateau stopping, stage checkpoints; then its best state put back. `fresh`: heads that start from their
    centroids here (their start is evaluated first). Returns what the stage summary adds: epochs and updates run, why
    it stopped."""
    cfg, state, optimizer = ctx.prep.config, ctx.state, stepping.optimizer
    p = state.stage
    train_sets = {t: ctx.prep.features[t]["train"] for t in active}
    updates = StagePlan.build(train_sets, cfg.train, stage.name, stage.epochs, path.packs)
    warm, best, named = warmup_steps(stage.warmup, updates.updates), None, named_params(groups, stage.trainable)
    begin = checkpoint.snapshot(params) if begin is None and cfg.train.checkpoint else begin
    if inside:
        stepping.load_optimizer_state(inside[0])
        best = inside[2]
    elif fresh and stage.restore_best:  # the centroid start is a candidate for the stage's best (head_start.py)
        p.evals.update(evaluate(ctx, path, stage, 0.0), at=state.step)
        best, p.has_best = checkpoint.snapshot(params), True
    saved = (p.update, time.monotonic())  # when the last stage checkpoint was taken
    tracked, losses = TrainingRecords(p.log, p.norms, train_sets, stage), stage_losses(stage, cfg)
    while p.micro < updates.micro_total and not p.stopped:  # a fractional last epoch ends with whole updates
        grouped = updates.epoch(p.epoch, p.epoch_start)
        for batches in grouped[p.position :]:
            # Past epoch 0 the update count is an estimate: an overrun holds the schedule's last rate.
            factor = lr_multiplier(min(p.update, updates.updates - 1), updates.updates, warm, stage.lr_schedule)
            update = one_update(ctx, path, stepping, stage, losses, batches, train_sets, named, factor)
            p.micro, p.update, p.position, state.step = (p.micro + len(batches), p.update + 1, p.position + 1,
                                                         state.step + 1)
            tracked.add(update)  # its values stay on the device until read (training/numerics.py)
            logs = p.update % cfg.train.log_every == 0
            task_losses = tracked.read(ctx) if logs else None
            ctx.events(UpdateDone(stage.name, p.update, max(updates.updates, p.update),
                                  None if task_losses is None else sum(task_losses.values()), task_losses,
                                  sum(len(indices) for _, indices in batches)))
            if logs:
                tracked.log(ctx, stage.name, optimizer)
            due = p.position == len(grouped) if stage.eval_every == "epoch" else (
                p.update % int(stage.eval_every) == 0 or p.micro >= updates.micro_total)
            if due:
                tracked.read(ctx)  # a non-finite update stops the run before it is evaluated
                stepping.pull()  # FSDP: the trained weights, whole, into the model that evaluates
            if due and p.evals.update(evaluate(ctx, path, stage, p.micro / updates.per_epoch), at=state.step):
                best, p.has_best = checkpoint.snapshot(params), True
            elif due and p.evals.stalled:
                p.stopped = f"plateau: no gain of {stage.min_delta} in {stage.patience} evaluations"
            agreed_stop(ctx)
            saved = stage_checkpoint(ctx, stepping, named, begin, best, saved, pulled=due, tracked=tracked)
            if ctx.stop.requested:
                raise signals.interrupted(ctx, stage)
            if p.stopped:
                break
        else:
            p.epoch, p.epoch_start, p.position = p.epoch + 1, p.micro, 0
    return end_stage(ctx, stepping, tracked, stage, params, best, updates.per_epoch)


def end_stage(ctx: Context, stepping, tracked: TrainingRecords, stage: Stage, params: list, best: list | None,
              per_epoch: int) -> dict:
    """A stage's last updates read, its best state put back, its heads marked trained; returns what the stage summary
    adds."""
    state, p = ctx.state, ctx.state.stage
    tracked.read(ctx)  # the stage's last updates: a non-finite one stops the run here
    stepping.pull()  # FSDP: the stage's last weights, whole, into the model (before its best is put back)
    if stage.restore_best and best is not None:
        checkpoint.put_back(params, best)
    state.trained_heads = sorted(set(state.trained_heads) | {g.split(":", 1)[1] for g in stage.trainable
                                                              if g.startswith("head:")})
    summary = {"epochs_run": round(p.micro / per_epoch, 3), "updates": p.update, "stopped": p.stopped or "completed"}
    summary.update({k: v for k, v in (("skipped_updates", p.skipped), ("nonfinite_updates", p.nonfinite),
                                      ("micro_batch_pieces", p.split if p.split > 1 else 0)) if v})
    return summary


def stage_checkpoint(ctx: Context, stepping, named: dict, begin: list | None, best: list | None, saved: tuple,
                     pulled: bool, tracked: TrainingRecords) -> tuple:
    """A stage checkpoint where one is due (`train.checkpoint_every` updates or minutes since `saved`, or a signal);
    returns when the last one was taken. `pulled`: FSDP's weights are in the model already (an evaluation ran).
    `tracked`: the records, read first (the checkpoint holds their sums; a non-finite update stops the run here)."""
    cfg, p = ctx.prep.config.train, ctx.state.stage
    # The main process's clock decides (a checkpoint under FSDP is gathered by every process).
    if not cfg.checkpoint or not (ctx.stop.requested or distributed.agree(checkpoint.due(cfg, p.update, saved))):
        return saved
    tracked.read(ctx)
    if not pulled:
        stepping.pull()
    saved_optimizer, rng = stepping.optimizer_state(), checkpoint.rng_states()  # every process's
    if ctx.main:
        ctx.state.metrics_lines = ctx.run.metrics_lines()
        checkpoint.save_stage(ctx.run, ctx.state, named, saved_optimizer, begin, best, rng)
    return p.update, time.monotonic()


def agreed_stop(ctx: Context) -> None:
    """With several processes, a signal that reached any of them stops all of them at the same update (each would
    otherwise wait for the others at the next gradient reduction)."""
    agreed = distributed.any_signal(ctx.stop.signal)
    if agreed is not None and not ctx.stop.requested:
        ctx.stop.signal = agreed


def resume_run(run_dir: str | Path, callbacks: Sequence[Callback] = (), allow_config_change: Sequence[str] = ()
               ) -> RunDir:
    """Continue a run that stopped, in its own directory, from its last checkpoint (from its start when it stopped
    before the first), with the config it recorded; it ends as the uninterrupted run would have. config.yaml must be
    as the run left it, but for the `allow_config_change` keys (training/contract.py)."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise InputError(f"no {run.config.name} here: not a thawing run directory", path=run.path)
    if distributed.is_main():  # the clear error first (a finished run, a damaged checkpoint), before any model loads
        lock = run.lock()  # taken before the checkpoint is read: reading may repair it, never under a live run
        try:
            checkpoint.read_state(run)
        finally:
            lock.close()
    return train(load_config(run.config), callbacks=callbacks, resume=run.path,
                 allow_config_change=allow_config_change)
