"""The training loop: runs a stage plan over a multi-task model. The only loop in thawing.

`train(config)` prepares everything (input errors surface before a run directory exists) and resolves the runtime
once; then, for each stage, `run_stage` sets what trains, prepares a fresh optimizer through accelerate, steps
through task-sampled updates, evaluates, and stops on a plateau with the stage's best weights. The plan stops when a
stage does not beat the best score so far; a checkpoint follows every stage. Progress goes to an optional
`events(name, payload)` callback.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from thawing.config import RunConfig
from thawing.errors import InputError
from thawing.freezing import active_tasks, apply_trainable, layer_names, parameter_table, set_frozen_modes
from thawing.inference import score
from thawing.metrics import selection_score
from thawing.model.encoder import Encoder
from thawing.model.groups import parameter_groups
from thawing.report import write_report
from thawing.run_dir import RunDir
from thawing.runtime import Runtime, make_accelerator, resolve_for_training
from thawing.training import checkpoint
from thawing.training.checkpoint import TrainState
from thawing.training.paths import WholeModel, centroid_heads, choose_path
from thawing.training.plateau import Plateau
from thawing.training.schedule import lr_multiplier, warmup_steps
from thawing.training.setup import Prepared, prepare
from thawing.training.stages import Stage, build_plan, stage_configs, stage_optimizer
from thawing.training.updates import StagePlan, divisors

log = logging.getLogger(__name__)
Events = Callable[[str, dict], None]


@dataclass
class Context:
    """What every stage of one run shares, passed explicitly."""

    prep: Prepared
    run: RunDir
    runtime: Runtime
    accelerator: object
    state: TrainState
    events: Events

    @property
    def model(self):
        return self.prep.model


def train(config: RunConfig, run_dir: str | None = None, events: Events | None = None,
          run_optional: bool | None = None, encoder: Encoder | None = None, resume: str | Path | None = None) -> RunDir:
    """Train per the config's plan and write a complete run directory. Returns it.

    `encoder` replaces loading `config.model.name` (e.g. a model built in memory). `resume` continues the run
    directory of a run that stopped, from its last stage-boundary checkpoint (see `resume_run`).
    """
    ctx, plan, groups = start(config, run_dir, events, run_optional, encoder, resume)
    state, run = ctx.state, ctx.run
    for stage in plan[state.stages_done :] if not state.plan_stopped else []:
        params = [p for g in stage.trainable for _, p in groups[g]]
        begin = checkpoint.snapshot(params)  # what this stage started from, if it fails to beat the plan's best
        summary = run_stage(ctx, stage, groups, params)
        if not state.best.update(summary["best_score"], min_delta=stage.min_delta):  # the plan's plateau
            checkpoint.put_back(params, begin)
            summary["stopped"] += "; plan stopped: stage did not beat the best so far"
            ctx.events("plan_stop", {"stage": stage.name, "score": summary["best_score"], "best": state.best.best})
            state.plan_stopped = True
        state.summaries.append(summary)
        state.stages_done += 1
        state.heads = {t: spec.head for t, spec in ctx.model.specs.items()}
        state.metrics_lines = run.metrics_lines()
        run.write_json(run.stages, state.summaries)
        if config.train.checkpoint:
            checkpoint.save(run, ctx.model, state)
        if state.plan_stopped:
            break
    finish(ctx)
    return run


def start(config: RunConfig, run_dir: str | None = None, events: Events | None = None,
          run_optional: bool | None = None, encoder: Encoder | None = None, resume: str | Path | None = None
          ) -> tuple[Context, list[Stage], dict]:
    """Everything before the first stage: data, model and plan (input errors surface before a run directory exists),
    the runtime, the run directory (new, or the stopped one with its checkpoint restored). Returns the run's context,
    its plan and the model's parameter groups."""
    resumed = checkpoint.read_state(RunDir(resume)) if resume else None
    if resumed:  # the plan must be the one the checkpoint was taken in
        run_optional = resumed.run_optional
    prep = prepare(config, encoder)
    groups = parameter_groups(prep.model)
    plan = build_plan(config, groups, run_optional)  # selector errors surface before the run dir exists
    runtime = resolve_for_training(config, prep)
    accelerator = make_accelerator(runtime)
    if resumed:
        run = RunDir(resume)
        if [s.name for s in plan] != resumed.plan:
            raise InputError(f"the plan is now {[s.name for s in plan]}, the checkpoint's was {resumed.plan}",
                             path=run.path)
        checkpoint.restore(run, prep.model)
        run.keep_metrics(resumed.metrics_lines)  # what the interrupted stage logged goes; it runs again
        for task, head in resumed.heads.items():  # frozen heads became centroid (linear) heads
            prep.model.specs[task].head = head
        log.info("resuming %s after stage %d of %d", run.path, resumed.stages_done, len(plan))
    else:
        run = RunDir.create(config.name, run_dir)
        if isinstance(config.schedule, str):  # the run records the stages a preset expands to, as they ran
            config = config.model_copy(update={"schedule": stage_configs(config, len(layer_names(groups)))})
        run.write_config(config)
    run.write_json(run.runtime, runtime.to_json())
    state = resumed or TrainState(plan=[s.name for s in plan], run_optional=run_optional)
    return Context(prep, run, runtime, accelerator, state, events or (lambda name, payload: None)), plan, groups


def run_stage(ctx: Context, stage: Stage, groups: dict, params: list) -> dict:
    """One stage, top to bottom: what trains, the forward path, then epochs of updates, each update accumulated over
    its micro-batches and stepped through accelerate, evaluations with plateau stopping; returns the stage summary and
    leaves the model in the stage's best state."""
    started, model, cfg, state = time.perf_counter(), ctx.model, ctx.prep.config, ctx.state
    apply_trainable(groups, stage.trainable)
    active = active_tasks(model.specs, stage.trainable)
    model.train()
    set_frozen_modes(model, stage.trainable)
    optimizer = stage_optimizer(stage, groups, cfg.train.weight_decay) if params else None
    stepped_model, optimizer = ctx.accelerator.prepare(model, optimizer) if optimizer else (model, None)
    path = choose_path(stepped_model, model, stage.trainable, ctx.prep.features, ctx.runtime, cfg, active,
                       lambda payload: ctx.events("cache", payload))
    ctx.events("stage_start", {"stage": stage.name, "table": parameter_table(groups, stage.trainable),
                               "lrs": stage.lrs, "cached": path.cached})
    summary = {"stage": stage.name, "trainable_params": sum(p.numel() for p in params), "cached": path.cached,
               **path.summary}
    evals = Plateau(min_delta=stage.min_delta, patience=stage.patience)
    if optimizer is None or stage.epochs == 0:  # nothing trains: untrained heads become centroid classifiers
        centroid_heads(path, [t for t in model.specs if t not in state.trained_heads])
        evals.update(evaluate(ctx, path, stage, 0.0), at=state.step)
        summary.update(epochs_run=0, updates=0, stopped="no training (frozen)")
    else:
        train_sets = {t: ctx.prep.features[t]["train"] for t in active}
        updates = StagePlan.build(train_sets, cfg.train, stage.name, stage.epochs, ctx.runtime.packing is not None)
        warm, micro, update, skipped, stopped, best = warmup_steps(stage.warmup, updates.updates), 0, 0, 0, "", None
        epoch = 0
        while micro < updates.micro_total and not stopped:  # a fractional last epoch ends with whole updates
            grouped, epoch = updates.epoch(epoch, micro), epoch + 1
            for position, batches in enumerate(grouped):
                # One update: every micro-batch's loss, each divided so that the update averages its items.
                loss = 0.0
                for (task, indices), divisor in zip(batches, divisors(batches, train_sets)):
                    micro_loss = path.loss(task, indices, divisor)
                    ctx.accelerator.backward(micro_loss)
                    loss += micro_loss.detach()
                # Past epoch 0 the update count is an estimate: an overrun holds the schedule's last rate.
                factor = lr_multiplier(min(update, updates.updates - 1), updates.updates, warm, stage.lr_schedule)
                for group in optimizer.param_groups:  # a pure function of the step: no scheduler state
                    group["lr"] = group["initial_lr"] * factor
                if cfg.train.grad_clip:  # accelerate unscales fp16 gradients first
                    ctx.accelerator.clip_grad_norm_(params, cfg.train.grad_clip)
                optimizer.step()  # with fp16, a step whose gradients are not finite is skipped (and counted)
                optimizer.zero_grad(set_to_none=True)
                skipped += int(optimizer.step_was_skipped)
                micro, update, state.step = micro + len(batches), update + 1, state.step + 1
                ctx.events("step", {"stage": stage.name, "update": update, "total": max(updates.updates, update),
                                    "loss": float(loss)})
                due = position == len(grouped) - 1 if stage.eval_every == "epoch" else (
                    update % int(stage.eval_every) == 0 or micro >= updates.micro_total)
                if not due:
                    continue
                if evals.update(evaluate(ctx, path, stage, micro / updates.per_epoch), at=state.step):
                    best = checkpoint.snapshot(params)
                elif evals.stalled:
                    stopped = f"plateau: no gain of {stage.min_delta} in {stage.patience} evaluations"
                    break
        if stage.restore_best and best is not None:
            checkpoint.put_back(params, best)
        state.trained_heads = sorted(set(state.trained_heads) | {g.split(":", 1)[1] for g in stage.trainable
                                                                  if g.startswith("head:")})
        summary.update(epochs_run=round(micro / updates.per_epoch, 3), updates=update, stopped=stopped or "completed")
        if skipped:
            summary["skipped_updates"] = skipped
    ctx.accelerator.unwrap_model(stepped_model, keep_fp32_wrapper=False)
    ctx.accelerator.free_memory()  # accelerate lets go of this stage's optimizer (its Adam moments)
    summary.update(best_score=evals.best, best_step=state.step if evals.best_at is None else evals.best_at,
                   wall_s=round(time.perf_counter() - started, 2))
    ctx.events("stage_end", summary)
    return summary


def evaluate(ctx: Context, path: WholeModel, stage: Stage, epoch: float, split: str = "dev") -> float:
    """Every task's metrics on `split`, logged to metrics.jsonl; returns the stage's selection score."""
    model, results = ctx.model, {}
    for task, spec in model.specs.items():
        results[task] = score(spec, path.logits(task, split), ctx.prep.gold[task][split])
        ctx.run.log_metrics({"stage": stage.name, "step": ctx.state.step, "epoch": round(epoch, 3), "split": split,
                             "task": task, "metrics": results[task]})
    value = selection_score(results, ctx.prep.primary, stage.metric)
    ctx.run.log_metrics({"stage": stage.name, "step": ctx.state.step, "epoch": round(epoch, 3), "split": split,
                         "task": "*", "metrics": {"score": value}})
    ctx.events("eval", {"stage": stage.name, "step": ctx.state.step, "epoch": epoch, "split": split,
                        "results": results, "score": value})
    return value


def finish(ctx: Context) -> None:
    """The final model: each task's decision rule fitted on dev, final/ saved, test metrics (dev where a task has no
    test split) in results.json, and the report."""
    model, run = ctx.model, ctx.run
    model.eval()
    whole = WholeModel(model, model, ctx.prep.features, ctx.runtime, ctx.prep.config.train.eval_batch_size)
    for task, spec in model.specs.items():
        spec.kind.decide(spec, lambda task=task: whole.logits(task, "dev"), ctx.prep.gold[task]["dev"])
    run.save_final(model)
    tasks, splits = {}, {}
    for task, spec in model.specs.items():
        splits[task] = "test" if "test" in ctx.prep.features[task] else "dev"
        tasks[task] = score(spec, whole.logits(task, splits[task]), ctx.prep.gold[task][splits[task]])
    results = {"tasks": tasks, "score": selection_score(tasks, ctx.prep.primary, ctx.prep.config.selection_metric),
               "splits": splits}
    run.write_json(run.results, results)
    run.write_model_card()  # final/README.md, from the files just written
    ctx.events("results", results)
    try:
        write_report(run.path)
    except Exception as exc:  # the results are written; a report can be made again with `thawing report`
        log.warning("no report for %s (%s: %s); `thawing report %s` retries", run.path, type(exc).__name__, exc,
                    run.path)


def resume_run(run_dir: str | Path, events: Events | None = None) -> RunDir:
    """Continue a run that stopped, in its own directory, from its last stage-boundary checkpoint, with the config it
    recorded; it ends as the uninterrupted run would have."""
    from thawing.config import load_config

    run = RunDir(run_dir)
    checkpoint.read_state(run)  # the clear error first, before any model loads
    return train(load_config(run.config), events=events, resume=run.path)
