"""Evaluations during training and the run's end: every task's metrics on a split, logged to metrics.jsonl, and the
final model (decision rules fitted on dev, final/ saved, test metrics in results.json, its breakdown for the report,
which the caller writes: reporting/report.py)."""

from __future__ import annotations

import logging
import shutil

import torch

from thawing.errors import NonFiniteError
from thawing.model.inference import score
from thawing.store import metric_lines
from thawing.store.model_card import write_model_card
from thawing.task_types.breakdown import SPLITS, split_entry
from thawing.task_types.metrics import selection_score
from thawing.training.events import Evaluated, Finished
from thawing.training.paths import WholeModel

log = logging.getLogger(__name__)


def evaluate(ctx, path: WholeModel, stage, epoch: float, split: str = "dev") -> float:
    """Every task's metrics on `split`, logged to metrics.jsonl; returns the stage's selection score."""
    model, results = ctx.model, {}
    for task, spec in model.specs.items():
        results[task] = score(spec, path.logits(task, split), ctx.prep.gold[task][split])
        ctx.log(metric_lines.evaluation(stage.name, ctx.state.step, epoch, split, task, results[task]))
    value = selection_score(results, ctx.prep.primary, stage.metric)
    ctx.log(metric_lines.evaluation(stage.name, ctx.state.step, epoch, split, metric_lines.SCORE, {"score": value}))
    ctx.events(Evaluated(stage.name, ctx.state.step, epoch, split, results, value))
    return value


def finish(ctx) -> None:
    """The final model: each task's decision rule fitted on dev, final/ saved, test metrics (dev where a task has no
    test split) in results.json, the breakdown (report/evaluation.json); then the checkpoints go (unless
    `train.keep_checkpoints`). Running it again after a kill anywhere in it gives the same result."""
    model, run = ctx.model, ctx.run
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:  # never a final model that computes NaN
        raise NonFiniteError(f"{len(bad)} weights are not finite (first: {bad[0]}); no final model was written")
    model.eval()
    whole = WholeModel(model, ctx.prep.features, ctx.runtime, ctx.prep.config.train.eval_batch_size)
    # Every task's dev and test logits, once: for the decision rules, results.json and the report's breakdown.
    logits = {task: {split: whole.logits(task, split) for split in SPLITS if split in ctx.prep.features[task]}
              for task in model.specs}
    gold = ctx.prep.gold
    for task, spec in model.specs.items():
        spec.kind.decide(spec, lambda task=task: logits[task]["dev"], gold[task]["dev"])
    if ctx.main:  # with several processes every one computes (its share of) the logits; the main one writes
        run.save_final(model)
    tasks, splits = {}, {}
    for task, spec in model.specs.items():
        splits[task] = "test" if "test" in ctx.prep.features[task] else "dev"
        tasks[task] = score(spec, logits[task][splits[task]], gold[task][splits[task]])
    results = {"tasks": tasks, "score": selection_score(tasks, ctx.prep.primary, ctx.prep.config.selection_metric),
               "splits": splits}
    if ctx.probes is not None:
        results.update(probes=ctx.probes.final(ctx.state.probes), probe_seconds=round(ctx.probes.seconds, 2))
    if not ctx.main:
        return
    frozen = frozen_heads(run.read_metrics(), ctx.prep.primary, [t for t, spec in model.specs.items()
                                                                  if spec.kind.has_head
                                                                  and t not in ctx.state.trained_heads])
    if frozen:
        results["frozen_heads"] = frozen
    run.write_evaluation({task: {split: split_entry(model.specs[task], out, gold[task][split])
                                 for split, out in by_split.items()} for task, by_split in logits.items()})
    run.write_json(run.results, results)
    write_model_card(run.path)  # final/README.md, from the files just written
    ctx.events(Finished(results))
    if not ctx.prep.config.train.keep_checkpoints:  # results.json says the run is done: nothing resumes it now
        shutil.rmtree(run.checkpoints, ignore_errors=True)


def frozen_heads(metrics: list[dict], primary: dict[str, str], untrained: list[str]) -> dict[str, dict]:
    """For each task whose head no stage trained: its primary dev metric at the run's first evaluation and at its last,
    and the change. Such a head is fixed, so the change is what training the shared encoder did to that task."""
    out = {}
    for task in untrained:
        values = [m["metrics"][primary[task]] for m in metrics
                  if m.get("task") == task and m.get("split") == "dev" and primary[task] in m.get("metrics", {})]
        if len(values) >= 2:
            out[task] = {"metric": primary[task], "start": values[0], "end": values[-1],
                         "change": values[-1] - values[0]}
    return out
