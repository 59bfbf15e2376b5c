"""The training loop: runs a stage plan over a multi-task model. The only loop in thawing.

`train(config)` prepares everything (input errors surface before a run directory exists), then for
each stage: set what trains, build a fresh optimizer over exactly that, step through task-sampled
batches, evaluate, stop on plateau, restore the best state. The plan stops when a stage does not
beat the best score so far. Progress goes to an optional `events(name, payload)` callback.
"""

from __future__ import annotations

import itertools
import logging
import math
import zlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator

from thawing.config import RunConfig, auto_precision
from thawing.data.batching import collate, length_grouped_batches, packed_batches, token_budget_batches
from thawing.data.sampling import task_order
from thawing.errors import InputError
from thawing.freezing import apply_trainable, encoder_frozen, parameter_table, set_frozen_modes
from thawing.metrics import selection_score
from thawing.model.encoder import Encoder
from thawing.model.groups import parameter_groups
from thawing.model.heads import centroid_init
from thawing.report import write_report
from thawing.run_dir import RunDir
from thawing.training import checkpoint
from thawing.training.boundary_cache import BoundaryCache, cache_dtype, estimate_bytes, first_trainable_layer, usable
from thawing.training.boundary_cache import build as build_boundary
from thawing.training.evaluate import CachedSplit, cached_batch, compute_cached, score, task_logits
from thawing.training.schedule import lr_multiplier, warmup_steps
from thawing.training.setup import Prepared, prepare
from thawing.training.stages import Stage, build_plan

log = logging.getLogger(__name__)
Events = Callable[[str, dict], None]


@dataclass
class Context:
    """The mutable state of one run, passed explicitly."""

    prep: Prepared
    run: RunDir
    accelerator: Accelerator
    events: Events
    groups: dict
    step: int = 0  # optimizer updates over the whole plan
    trained_heads: set[str] = field(default_factory=set)

    @property
    def model(self):
        return self.prep.model

    @property
    def cfg(self) -> RunConfig:
        return self.prep.config


def train(
    config: RunConfig,
    run_dir: str | None = None,
    events: Events | None = None,
    run_optional: bool | None = None,
    encoder: Encoder | None = None,
    resume: str | Path | None = None,
) -> RunDir:
    """Train per the config's plan and write a complete run directory. Returns it.

    `encoder` replaces loading `config.model.name` (e.g. a model built in memory). `resume` continues the run
    directory of a run that stopped, from its last stage-boundary checkpoint (see `resume_run`).
    """
    state = checkpoint.read_state(Path(resume)) if resume else None
    if state:  # the plan must be the one the checkpoint was taken in
        run_optional = state["run_optional"]
    prep = prepare(config, encoder)
    groups = parameter_groups(prep.model)
    plan = build_plan(config, groups, run_optional)  # selector errors surface before the run dir exists
    config = prep.config = resolve_auto(config)
    accelerator = Accelerator(
        mixed_precision=config.train.mixed_precision, cpu=config.train.device == "cpu", gradient_accumulation_steps=1
    )
    prep.model.to(accelerator.device)
    if state:
        run = RunDir(resume)
        if [s.name for s in plan] != state["plan"]:
            raise InputError(f"the plan is now {[s.name for s in plan]}, the checkpoint's was {state['plan']}", path=run.path)
        checkpoint.restore(run.path, prep.model)
    else:
        run = RunDir.create(config.name, run_dir)
        run.write_config(config)
    configure_speed(prep.model.encoder, config)
    ctx = Context(prep, run, accelerator, events or (lambda name, payload: None), groups)

    best, summaries, done, stopped = _restore_progress(ctx, state, len(plan)) if state else (-math.inf, [], 0, False)
    for index, stage in enumerate(plan[done:] if not stopped else [], start=done):
        summary = run_stage(ctx, stage, best)
        summaries.append(summary)
        run.write_json("stages.json", summaries)
        score = summary["best_score"]
        if best == -math.inf or (score is not None and score > best + stage.min_delta):
            best = score if score is not None else best
        else:
            summary["stopped"] += "; plan stopped: stage did not beat the best so far"
            run.write_json("stages.json", summaries)
            ctx.events("plan_stop", {"stage": stage.name, "score": summary["best_score"], "best": best})
            stopped = True
        if config.train.checkpoint:
            checkpoint.save(run.path, ctx.model, {
                "plan": [s.name for s in plan], "stages_done": index + 1, "plan_stopped": stopped, "best": best,
                "summaries": summaries, "step": ctx.step, "trained_heads": sorted(ctx.trained_heads),
                "heads": {t: spec.head for t, spec in ctx.model.specs.items()}, "metrics_lines": run.metrics_lines(),
                "run_optional": run_optional,
            })  # everything `_restore_progress` reads back
        if stopped:
            break

    run.save_final(ctx.model)
    results = final_results(ctx)
    run.write_json("results.json", results)
    ctx.events("results", results)
    try:
        write_report(run.path)
    except Exception as exc:  # the results are written; a report can be made again with `thawing report`
        log.warning("no report for %s (%s: %s); `thawing report %s` retries", run.path, type(exc).__name__, exc, run.path)
    return run


def _restore_progress(ctx: Context, state: dict, stages: int) -> tuple[float, list[dict], int, bool]:
    """Put a checkpoint's progress back (the weights and random state are already restored); returns the plan's
    best score, the finished stages' summaries, how many stages finished, and whether the plan had stopped."""
    ctx.step, ctx.trained_heads = state["step"], set(state["trained_heads"])
    for task, head in state["heads"].items():  # frozen heads became centroid (linear) heads
        ctx.model.specs[task].head = head
    ctx.run.keep_metrics(state["metrics_lines"])  # what the interrupted stage logged goes; it runs again
    ctx.run.write_json("stages.json", state["summaries"])
    log.info("resuming %s after stage %d of %d", ctx.run.path, state["stages_done"], stages)
    return state["best"], state["summaries"], state["stages_done"], state["plan_stopped"]


def resume_run(run_dir: str | Path, events: Events | None = None) -> RunDir:
    """Continue a run that stopped, in its own directory, from its last stage-boundary checkpoint, with the
    config it recorded; it ends as the uninterrupted run would have."""
    from thawing.config import load_config

    path = Path(run_dir)
    checkpoint.read_state(path)  # the clear error first, before any model loads
    return train(load_config(path / "config.yaml"), events=events, resume=path)


def resolve_auto(config: RunConfig) -> RunConfig:
    """The config with its "auto" precision decided for this machine (the run directory records what ran).
    Auto packing and compile stay None: the encoder decides them on the first batches (`configure_speed`)."""
    cfg = config.train
    if cfg.mixed_precision != "auto":
        return config
    precision = auto_precision(cfg.device != "cpu" and torch.cuda.is_available())
    return config.model_copy(update={"train": cfg.model_copy(update={"mixed_precision": precision})})


def configure_speed(encoder: Encoder, config: RunConfig) -> None:
    """Apply the config's padding, packing and compile switches to the encoder (after `resolve_auto`)."""
    cfg = config.train
    encoder.pad_multiple = cfg.pad_to_multiple_of or 1
    half_on_gpu = encoder.device.type == "cuda" and cfg.mixed_precision != "no"
    if cfg.packing is None:  # auto: flash varlen where it applies (a GPU in half precision); never rows
        encoder.pack_width = encoder.max_length if half_on_gpu else None
        encoder.pack_modes = ("varlen",)
    else:
        encoder.pack_width = (cfg.pack_width or encoder.max_length) if cfg.packing else None
    if cfg.compile:
        encoder.compile_layers()
    elif cfg.compile is None:  # auto: once training runs packed with varlen
        encoder.compile_on_varlen = half_on_gpu and cfg.packing is not False


# ---------------------------------------------------------------------------------------------- stage


def run_stage(ctx: Context, stage: Stage, plan_best: float) -> dict:
    """Run one stage; returns its summary. Leaves the model in the stage's best (or plan's best) state."""
    started = time.perf_counter()
    model, cfg = ctx.model, ctx.cfg
    apply_trainable(ctx.groups, stage.trainable)
    table = parameter_table(ctx.groups, stage.trainable)
    params = [p for g in stage.trainable for _, p in ctx.groups[g]]
    use_cache = encoder_frozen(stage.trainable) and cfg.cache.enabled is not False
    ctx.events("stage_start", {"stage": stage.name, "table": table, "lrs": stage.lrs, "cached": use_cache})
    log.info("stage %s parameters:\n%s", stage.name, "\n".join(
        f"  {r['group']:<20} {r['params']:>12,}  {'trainable, lr %.2e' % stage.lrs[r['group']] if r['trainable'] else 'frozen'}" for r in table))
    snapshot = _snapshot(params)  # the plan's best so far, if this stage fails to beat it

    model.train()
    set_frozen_modes(model, stage.trainable)
    cache = _build_cache(ctx) if use_cache else {}
    boundary = {} if use_cache or not params else _build_boundary(ctx, stage)
    summary = {"stage": stage.name, "trainable_params": sum(p.numel() for p in params), "cached": use_cache}
    if boundary:
        first = next(iter(boundary.values())).first
        summary.update(boundary_cache=f"layers.{first}", boundary_cache_mb=round(sum(b.nbytes for b in boundary.values()) / 1e6, 1))

    if not params or stage.epochs == 0:
        _centroid_heads(ctx, cache)
        result = _evaluate(ctx, stage, 0.0, cache)
        summary.update(best_score=result, best_step=ctx.step, epochs_run=0, stopped="no training (frozen)")
    else:
        summary.update(_fit(ctx, stage, params, cache, boundary))
        ctx.trained_heads |= {g.split(":", 1)[1] for g in stage.trainable if g.startswith("head:")}

    if summary["best_score"] is not None and plan_best != -math.inf and summary["best_score"] <= plan_best + stage.min_delta:
        _restore(params, snapshot)
    summary["wall_s"] = round(time.perf_counter() - started, 2)
    ctx.events("stage_end", summary)
    return summary


def _fit(ctx: Context, stage: Stage, params: list, cache: dict, boundary: dict | None = None) -> dict:
    cfg = ctx.cfg
    train_sets = {t: ctx.prep.features[t]["train"] for t in _active_tasks(ctx, stage)}
    first = _epoch_plan(cfg, stage, train_sets, 0)
    per_epoch = len(first)
    micro_total = max(1, round(stage.epochs * per_epoch))

    def group(micro: list) -> list[list]:
        return _group_updates(micro, train_sets, cfg.train.grad_accum, cfg.train.update_tokens)

    updates = _estimate_updates(first, micro_total, group)
    warm = warmup_steps(stage.warmup, updates)
    optimizer = torch.optim.AdamW(
        [{"params": [p for _, p in ctx.groups[g]], "lr": stage.lrs[g], "initial_lr": stage.lrs[g], "name": g} for g in stage.trainable],
        weight_decay=cfg.train.weight_decay,
        # One kernel for all parameters on a GPU: the step over a 1.5B model's fp32 states is memory-bound, and
        # the default (foreach) makes several passes over them.
        fused=all(p.is_cuda for p in params) or None,
    )
    best, best_step, best_state, evals_without_gain = -math.inf, ctx.step, None, 0
    micro, update, stopped, epoch = 0, 0, "completed", 0
    while micro < micro_total and stopped == "completed":
        plan = first if epoch == 0 else _epoch_plan(cfg, stage, train_sets, epoch)
        grouped = group(plan[: micro_total - micro])  # a fractional last epoch ends with whole updates
        for position, batches in enumerate(grouped):
            loss = _accumulate(ctx, batches, train_sets, cache, boundary or {})
            micro += len(batches)
            # Past epoch 0 `updates` is an estimate (batch counts and token sums vary per epoch): an
            # overrun holds the schedule's last rate instead of reaching 0 and wasting updates.
            _step(ctx, optimizer, params, lr_multiplier(min(update, updates - 1), updates, warm, stage.lr_schedule))
            update += 1
            ctx.step += 1
            ctx.events("step", {"stage": stage.name, "update": update, "total": max(updates, update), "loss": loss})
            at_epoch_end = position == len(grouped) - 1
            due = at_epoch_end if stage.eval_every == "epoch" else (update % int(stage.eval_every) == 0 or micro >= micro_total)
            if not due:
                continue
            current = _evaluate(ctx, stage, micro / per_epoch, cache)
            if current > best + stage.min_delta or best == -math.inf:
                best, best_step, best_state, evals_without_gain = current, ctx.step, _snapshot(params), 0
            else:
                evals_without_gain += 1
                if stage.patience and evals_without_gain >= stage.patience:
                    stopped = f"plateau: no gain of {stage.min_delta} in {stage.patience} evaluations"
                    break
        epoch += 1
    if stage.restore_best and best_state is not None:
        _restore(params, best_state)
    return {
        "best_score": best if best != -math.inf else None,
        "best_step": best_step,
        "epochs_run": round(micro / per_epoch, 3),
        "updates": update,
        "stopped": stopped,
    }


def _step(ctx: Context, optimizer: torch.optim.Optimizer, params: list, lr_factor: float) -> None:
    for group in optimizer.param_groups:  # a pure function of the step: no scheduler state
        group["lr"] = group["initial_lr"] * lr_factor
    if ctx.cfg.train.grad_clip:
        ctx.accelerator.clip_grad_norm_(params, ctx.cfg.train.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _seed(cfg: RunConfig, stage: Stage, epoch: int) -> int:
    return zlib.crc32(f"{cfg.train.seed}/{stage.name}/{epoch}".encode())  # hash() of a str varies per process


def _epoch_batches(cfg: RunConfig, stage: Stage, train_sets: dict, epoch: int) -> dict[str, list[list[int]]]:
    """Each task's batches for one epoch: a fixed count of examples, or filled to `train.max_tokens`."""
    seed = _seed(cfg, stage, epoch)
    if cfg.train.max_tokens and cfg.train.packing:
        return {t: packed_batches(f.lengths, cfg.train.max_tokens, seed + i) for i, (t, f) in enumerate(train_sets.items())}
    if cfg.train.max_tokens:
        return {t: token_budget_batches(f.lengths, cfg.train.max_tokens, seed + i) for i, (t, f) in enumerate(train_sets.items())}
    return {t: length_grouped_batches(f.lengths, cfg.train.batch_size, seed + i) for i, (t, f) in enumerate(train_sets.items())}


def _epoch_plan(cfg: RunConfig, stage: Stage, train_sets: dict, epoch: int) -> list[tuple[str, list[int]]]:
    """The epoch's micro-batches (task, indices) in sampled order."""
    batches = _epoch_batches(cfg, stage, train_sets, epoch)
    sampling, counts = cfg.train.sampling, {t: len(b) for t, b in batches.items()}
    order = task_order(counts, sampling.strategy, sampling.temperature, _seed(cfg, stage, epoch))
    # round_robin and temperature may draw a task more often than it has batches: it starts over.
    queues = {t: itertools.cycle(b) for t, b in batches.items()}
    return [(task, next(queues[task])) for task in order]


def _group_updates(micro: list, train_sets: dict, grad_accum: int = 1, update_tokens: int | None = None) -> list[list]:
    """Consecutive micro-batches per optimizer update: `grad_accum` of them, or, with `update_tokens`,
    as many as it takes to reach that many real tokens (the last update may fall short)."""
    if not update_tokens:
        return [micro[i : i + grad_accum] for i in range(0, len(micro), grad_accum)]
    updates, current, tokens = [], [], 0
    for task, indices in micro:
        current.append((task, indices))
        tokens += sum(len(train_sets[task].input_ids[i]) for i in indices)
        if tokens >= update_tokens:
            updates.append(current)
            current, tokens = [], 0
    return updates + [current] if current else updates


def _estimate_updates(first: list, micro_total: int, group: Callable[[list], list]) -> int:
    """The stage's updates from epoch 0's plan: exact up to one epoch, and for fixed-size batches
    with `grad_accum`; otherwise later epochs may group a little differently."""
    full, rest = divmod(micro_total, len(first))
    return full * len(group(first)) + (len(group(first[:rest])) if rest else 0)


def _divisors(update: list, train_sets: dict) -> list[float]:
    """What each micro-batch's summed loss is divided by: a task's items in the update are averaged
    together, whatever its batches' sizes, and the task weighs by its share of the update's micro-batches."""
    labelled, count = Counter(), Counter()
    for task, indices in update:
        labelled[task] += train_sets[task].labelled(indices)
        count[task] += 1
    # max(): a batch with no labelled item has a zero sum; any divisor keeps it zero, not NaN.
    return [max(labelled[task], 1) / count[task] * len(update) for task, _ in update]


def _accumulate(ctx: Context, update: list, train_sets: dict, cache: dict, boundary: dict) -> float:
    """Backward through each micro-batch of one update; returns the update's loss."""
    losses = []
    for (task, indices), divisor in zip(update, _divisors(update, train_sets)):
        loss = _loss(ctx, task, indices, cache, boundary, divisor)
        ctx.accelerator.backward(loss)
        losses.append(loss.detach())
    return torch.stack(losses).sum().item()  # one device sync per update


def _loss(ctx: Context, task: str, indices: list[int], cache: dict, boundary: dict, divisor: float | None = None) -> torch.Tensor:
    model, device = ctx.model, ctx.accelerator.device
    with ctx.accelerator.autocast():
        if task in cache:  # frozen encoder: the head reads features computed once
            features, labels = cached_batch(cache[task]["train"], indices, device)
            logits = model.heads[task](features)
        elif task in boundary:  # frozen bottom layers: only the layers above the boundary run
            batch = collate(model.encoder, ctx.prep.features[task]["train"], indices)
            labels, mask = batch["labels"].to(device), batch["attention_mask"].to(device)
            hidden = boundary[task].batch(indices, mask.shape[1], device)
            logits = model.forward_from(task, boundary[task].first, hidden, mask)
        else:
            batch = collate(model.encoder, ctx.prep.features[task]["train"], indices)
            labels = batch["labels"].to(device)
            logits = model(task, batch["input_ids"].to(device), batch["attention_mask"].to(device))
    return model.loss(task, logits, labels, divisor) * model.specs[task].loss_weight


def _active_tasks(ctx: Context, stage: Stage) -> list[str]:
    """Tasks whose loss reaches a trainable parameter; the others would only cost time."""
    trainable = set(stage.trainable)
    encoder_trains = any(g.startswith(("layers.", "embeddings", "norm")) for g in trainable)
    return [
        t
        for t, spec in ctx.model.specs.items()
        if f"head:{t}" in trainable or encoder_trains or (spec.type == "classification" and "projection" in trainable)
    ]


# ---------------------------------------------------------------------------------------------- evaluation


def _evaluate(ctx: Context, stage: Stage, epoch: float, cache: dict, split: str = "dev") -> float:
    results = {}
    for task, spec in ctx.model.specs.items():
        cached = cache.get(task, {}).get(split)
        with ctx.accelerator.autocast():  # with mixed precision, every forward runs in it, as training's do
            logits = task_logits(ctx.model, task, ctx.prep.features[task][split], ctx.cfg.train.eval_batch_size, ctx.accelerator.device, cached)
        results[task] = score(spec, logits, ctx.prep.gold[task][split])
        ctx.run.log_metrics({"stage": stage.name, "step": ctx.step, "epoch": round(epoch, 3), "split": split, "task": task, "metrics": results[task]})
    value = _score(ctx, results, stage.metric)
    ctx.run.log_metrics({"stage": stage.name, "step": ctx.step, "epoch": round(epoch, 3), "split": split, "task": "*", "metrics": {"score": value}})
    ctx.events("eval", {"stage": stage.name, "step": ctx.step, "epoch": epoch, "split": split, "results": results, "score": value})
    return value


def _score(ctx: Context, results: dict, metric: str | None) -> float:
    return selection_score(results, {t: s.type for t, s in ctx.model.specs.items()}, metric)


def final_results(ctx: Context) -> dict:
    """Metrics of the final model on each task's test split, or dev where there is no test."""
    model = ctx.model
    model.eval()
    tasks, splits = {}, {}
    for task, spec in model.specs.items():
        split = "test" if "test" in ctx.prep.features[task] else "dev"
        with ctx.accelerator.autocast():
            logits = task_logits(model, task, ctx.prep.features[task][split], ctx.cfg.train.eval_batch_size, ctx.accelerator.device)
        tasks[task], splits[task] = score(spec, logits, ctx.prep.gold[task][split]), split
    return {"tasks": tasks, "score": _score(ctx, tasks, ctx.cfg.selection_metric), "splits": splits}


# ---------------------------------------------------------------------------------------------- helpers


def _build_cache(ctx: Context) -> dict[str, dict[str, CachedSplit]]:
    """Frozen encoder: every example's features once, from the disk cache when an earlier stage or run
    with the same weights, settings and inputs computed them."""
    from thawing.cache import FeatureStore, entry_key, fingerprint

    store = FeatureStore(ctx.cfg.cache.dir)
    encoder = ctx.model.encoder
    weights = fingerprint(encoder)
    settings = {"pooling": encoder.pooling, "normalize": encoder.normalize, "precision": ctx.cfg.train.mixed_precision, "version": 1}
    bs, device = ctx.cfg.train.eval_batch_size, ctx.accelerator.device
    out: dict[str, dict[str, CachedSplit]] = {}
    for task, splits in ctx.prep.features.items():
        out[task] = {}
        for split, feats in splits.items():
            if split == "test":
                continue
            key = entry_key(weights, {**settings, "type": ctx.model.specs[task].type}, [feats.input_ids, feats.word_starts])
            arrays = store.load(key)
            if arrays is None:
                ctx.events("cache", {"task": task, "split": split, "examples": len(feats)})
                with ctx.accelerator.autocast():
                    arrays = compute_cached(ctx.model, task, feats, bs, device).to_arrays()
                store.save(key, arrays)
                log.info("cached %s/%s: %d examples, %.1f MB at %s", task, split, len(feats), store.size_bytes(key) / 1e6, store.path(key))
            out[task][split] = CachedSplit.from_arrays(arrays, feats)
    return out


def _build_boundary(ctx: Context, stage: Stage) -> dict[str, BoundaryCache]:
    """Hidden states at the frozen boundary for every active task's train split, or {} (with the reason
    logged) when the stage has no frozen layers below it, the budget is too small, or the model cannot
    be split there. Never fails the run."""
    first = first_trainable_layer(stage.trainable)
    if first is None or ctx.cfg.cache.enabled is False:
        return {}
    encoder, device = ctx.model.encoder, ctx.accelerator.device
    tasks = _active_tasks(ctx, stage)
    feats = [ctx.prep.features[t]["train"] for t in tasks]
    dtype = cache_dtype(ctx.cfg.cache.dtype, device)
    need = estimate_bytes(feats, encoder.hidden_size, dtype)
    if need > ctx.cfg.cache.max_gb * 1e9:
        reason = f"it would need {need / 1e9:.2f} GB > cache.max_gb {ctx.cfg.cache.max_gb}"
    else:
        reason = usable(encoder, first, feats[0])  # in fp32: whether the forward splits, not its precision
    if reason:
        log.warning("stage %s: no boundary cache: %s", stage.name, reason)
        ctx.events("cache", {"message": f"no boundary cache: {reason}"})
        return {}
    bs = ctx.cfg.train.eval_batch_size
    with ctx.accelerator.autocast():  # the cache holds what training's own (autocast) forward would compute
        out = {t: build_boundary(encoder, first, f, bs, dtype) for t, f in zip(tasks, feats)}
    size = sum(b.nbytes for b in out.values())
    ctx.events("cache", {"message": f"boundary cache at layers.{first}: {sum(len(f) for f in feats)} examples, "
                                    f"{size / 1e6:.1f} MB {str(dtype).replace('torch.', '')} (estimate {need / 1e6:.1f} MB)"})
    return out


def _centroid_heads(ctx: Context, cache: dict) -> None:
    """Heads that no stage has trained become nearest-centroid classifiers: no gradient step."""
    device = ctx.accelerator.device
    for task, head in ctx.model.heads.items():
        if task in ctx.trained_heads:
            continue
        with ctx.accelerator.autocast():
            train = cache[task]["train"] if task in cache else compute_cached(
                ctx.model, task, ctx.prep.features[task]["train"], ctx.cfg.train.eval_batch_size, device
            )
        keep = train.labels >= 0
        ctx.model.specs[task].head["type"] = "linear"  # centroids live in a linear head (see centroid_init)
        centroid_init(head, train.features[keep].to(device), train.labels[keep].to(device))


def _snapshot(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    # In host memory: a full-parameter stage keeps two snapshots (its start and its best), which on a GPU would
    # be two more copies of a 1.5B model's weights next to the weights, gradients and Adam moments.
    return [p.detach().to("cpu", copy=True) for p in params]


@torch.no_grad()
def _restore(params: list[torch.nn.Parameter], state: list[torch.Tensor]) -> None:
    for p, saved in zip(params, state):
        p.copy_(saved)
