"""A run's report: what each stage trained and how every task moved, read back from the run directory.

    report/index.html       one self-contained page (figures inline): stages, final results, each task's dev curve
                            with the stage boundaries where each stage began, training loss per task (smoothed), the
                            learning rate of every group, retention and drift at each probe point, and the final
                            model's errors (a confusion matrix per classification task, F1 per entity type)
    report/report.md        the same tables in Markdown, with curves.png
    report/evaluation.json  the final model on dev and test, with the confusion matrices (training writes it:
                            task_types/breakdown.py)

`thawing train` and `thawing.train` write it after a run (`report_finished`); `thawing report RUN_DIR` writes it again
from the files (the run directory is the contract; the only other thing read is the task data, for the final model's
breakdown when a changed final model needs a new one). The folder is built aside and renamed into place. Nothing here
imports training or the API: a breakdown that needs the model is computed by the function the caller passes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from thawing.config import read_yaml
from thawing.errors import InputError
from thawing.reporting import figures
from thawing.reporting import html as H
from thawing.reporting.breakdown import final_evaluation
from thawing.store.metric_lines import of_split, probe_headline, probe_points, stage_starts, task_shares
from thawing.store.run_dir import CURVES, EVALUATION, INDEX_HTML, REPORT_MD, RunDir

log = logging.getLogger(__name__)


@dataclass
class RunFiles:
    """Everything the report reads, once."""

    run: RunDir
    config: dict
    tasks: dict
    stages: list[dict]
    results: dict
    lines: list[dict]
    primary: dict[str, str]
    evaluation: dict | None
    no_evaluation: str | None

    @property
    def dev(self) -> list[dict]:
        return of_split(self.lines, "dev")


def write_report(path: str | Path, evaluate: Callable[[RunDir], dict] | None = None) -> Path:
    """Write `report/` for the run at `path`; returns the report.md path. The final model's breakdown is the one
    training (or an earlier report) left in report/evaluation.json while it describes the same final model, else
    `evaluate(run)` where given (`thawing.api.evaluate_final`), else none."""
    run = RunDir(path)
    if not run.results.is_file():
        raise InputError("no results.json: not a finished thawing run directory", path=run.path)
    files = read_run(run, evaluate)
    starts = stage_starts(files.stages, files.lines)
    curves = figures.dev_curves(files.lines, files.primary, starts)
    page = run_page(files, starts, curves)
    with run.replacing(run.report_dir) as tmp:
        if curves:
            (tmp / CURVES).write_bytes(curves)
        (tmp / REPORT_MD).write_text(markdown(files, curves is not None))
        (tmp / INDEX_HTML).write_text(page)
        if files.evaluation:
            (tmp / EVALUATION).write_text(json.dumps(files.evaluation, indent=2, allow_nan=False) + "\n")
    return run.report_md


def report_finished(path: str | Path) -> None:
    """The report of a run that training just finished (report/evaluation.json written by it). A failure is a warning:
    the results are written, and `thawing report RUN` makes the report again."""
    try:
        write_report(path)
    except Exception as exc:  # noqa: BLE001 (any failure of the report must leave the finished run standing)
        log.warning("no report for %s (%s: %s); `thawing report %s` retries", path, type(exc).__name__, exc, path)


def _check_shapes(run: RunDir, stages, results) -> None:
    """What the report reads from stages.json and results.json is there: valid JSON of another shape is damage too."""
    if not (isinstance(stages, list) and all(isinstance(s, dict) and isinstance(s.get("stage"), str) for s in stages)):
        raise InputError("not a list of stage summaries: the file is damaged", path=run.stages)
    if not (isinstance(results, dict) and isinstance(results.get("tasks"), dict)
            and all(isinstance(v, dict) for v in results["tasks"].values())
            and isinstance(results.get("score"), (int, float))):
        raise InputError("not the results of a run (tasks and score): the file is damaged", path=run.results)


def _read_config(run: RunDir) -> dict:
    """The run's config.yaml as plain data ({} when absent): the report only names the model from it."""
    if not run.config.is_file():
        return {}
    try:
        config = read_yaml(run.config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, RecursionError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise InputError(f"cannot read the run's config ({detail})", path=run.config) from None
    return config if isinstance(config, dict) else {}


def read_run(run: RunDir, evaluate: Callable[[RunDir], dict] | None = None) -> RunFiles:
    config = _read_config(run)
    stages, results = run.read_json(run.stages), run.read_json(run.results)
    _check_shapes(run, stages, results)
    try:  # training's (or an earlier report's) breakdown of the same final model; a damaged one is computed again
        previous = json.loads(run.evaluation.read_text()) if run.evaluation.is_file() else None
    except (OSError, ValueError):
        previous = None
    evaluation, why = final_evaluation(run, previous, evaluate)
    return RunFiles(run, config, run.read_json(run.tasks), stages, results, run.read_metrics(),
                    run.primary_metrics(), evaluation, why)


# ---------------------------------------------------------------------------------------------- tables
# Each table is (header, rows) of strings, rendered as Markdown or HTML.


def stage_table(stages: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["stage", "trainable parameters", "epochs", "updates", "best dev score", "at step", "stopped", "wall"]
    rows = [[s["stage"], f"{s.get('trainable_params', 0):,}", str(s.get("epochs_run", "")), str(s.get("updates", "")),
             "" if s.get("best_score") is None else f"{s['best_score']:.4f}", str(s.get("best_step", "")),
             str(s.get("stopped", "")), f"{s.get('wall_s', '')} s"] for s in stages]
    return header, rows


def dev_table(files: RunFiles) -> tuple[list[str], list[list[str]]]:
    rows = []
    for task, metric in files.primary.items():
        values = [m["metrics"][metric] for m in files.dev if m["task"] == task and metric in m["metrics"]]
        if values:
            rows.append([task, metric, f"{values[0]:.4f}", f"{max(values):.4f}", f"{values[-1]:.4f}"])
    return ["task", "metric", "first", "best", "last"], rows


def results_table(results: dict) -> tuple[list[str], list[list[str]]]:
    names = sorted({name for r in results["tasks"].values() for name in r})
    rows = [[task, results.get("splits", {}).get(task, ""), *(f"{v[n]:.4f}" if n in v else "" for n in names)]
            for task, v in results["tasks"].items()]
    return ["task", "split", *names], rows


def evaluation_table(evaluation: dict) -> tuple[list[str], list[list[str]]]:
    """The final model on each split it has (dev and test)."""
    names = sorted({n for splits in evaluation["tasks"].values() for e in splits.values() for n in e["metrics"]})
    rows = [[task, split, str(e["examples"]), *(f"{e['metrics'][n]:.4f}" if n in e["metrics"] else "" for n in names)]
            for task, splits in evaluation["tasks"].items() for split, e in splits.items()]
    return ["task", "split", "examples", *names], rows


def probe_table(files: RunFiles) -> tuple[list[str], list[list[str]]]:
    """Each probe's headline (retention, or drift) at every probe point, the start first."""
    points = probe_points(files.lines)
    stages = list(dict.fromkeys(stage for values in points.values() for stage, _, _ in values))
    rows = []
    for name, values in points.items():
        at = {stage: probe_headline(m) for stage, _, m in values}
        metric = next((h[0] for h in at.values() if h), "")
        rows.append([name, metric, *(f"{at[s][1]:.4f}" if at.get(s) else "" for s in stages)])
    return ["probe", "metric", *stages], rows


def frozen_heads_table(results: dict) -> tuple[list[str], list[list[str]]]:
    rows = [[task, h.get("metric", ""), f"{h['start']:.4f}", f"{h['end']:.4f}", f"{h['change']:+.4f}"]
            for task, h in (results.get("frozen_heads") or {}).items()]
    return ["task (head never trained)", "metric", "start", "end", "change"], rows


def share_table(lines: list[dict]) -> tuple[list[str], list[list[str]]]:
    shares = task_shares(lines) or {}
    return ["task", "share of updates"], [[task, f"{share:.1%}"] for task, share in shares.items()]


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


# ---------------------------------------------------------------------------------------------- markdown


def _labels(spec: dict) -> str:
    """A task's label set in a few words: a count, or what a type without labels has (similarity: its score range)."""
    from thawing.task_types import TASK_TYPES

    labels, kind = spec.get("labels", []), TASK_TYPES.get(spec.get("type", ""))
    if kind is None or kind.min_labels:
        return f"{len(labels)} labels"
    return f"scores {float(labels[0]):g} to {float(labels[1]):g}" if len(labels) == 2 else "no labels (ranking)"


def markdown(files: RunFiles, curves: bool) -> str:
    model = (files.config.get("model") or {}).get("name", "?")
    lines = [f"# {files.run.path.name}", "", f"Model: `{model}`. Tasks:", ""]
    for task, spec in files.tasks.items():
        lines.append(f"- **{task}**: {spec.get('type')}, {_labels(spec)}, primary metric {files.primary[task]}")
    lines += ["", "## Stages", "", *md_table(*stage_table(files.stages))]
    lines += ["", "## Each task on dev", "", "First evaluation, best, and last, in each task's primary metric: a task "
              "whose head or encoder stopped training shows here what it kept.", "", *md_table(*dev_table(files))]
    lines += ["", "## Final model", "", *md_table(*results_table(files.results)), "",
              f"Selection score: **{files.results['score']:.4f}**"]
    if files.evaluation:
        lines += ["", "On each split:", "", *md_table(*evaluation_table(files.evaluation))]
    header, rows = probe_table(files)
    if rows:
        lines += ["", "## Retention probes", "", "Retention is the probe's value over the pretrained encoder's; drift "
                  "how far the weights moved.", "", *md_table(header, rows)]
    header, rows = frozen_heads_table(files.results)
    if rows:
        lines += ["", "## Frozen heads", "", *md_table(header, rows)]
    if curves:
        lines += ["", "## Curves", "", f"![dev metrics by step]({CURVES})"]
    lines += ["", "Every figure (training loss, learning rates, probes, confusion matrices): "
              f"[{INDEX_HTML}]({INDEX_HTML})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- html


def run_page(files: RunFiles, starts: list[tuple[int, str]], curves: bytes | None) -> str:
    model = (files.config.get("model") or {}).get("name", "?")
    tasks = ", ".join(f"{t} ({s.get('type')}, {files.primary[t]})" for t, s in files.tasks.items())
    blocks = [H.paragraph(f"Model {model}. Tasks: {tasks}. Selection score of the final model: "
                          f"{files.results['score']:.4f}."),
              H.heading("Stages"), H.table(*stage_table(files.stages))]
    blocks += [H.heading("Final model"), H.table(*results_table(files.results))]
    if files.evaluation:
        blocks += [H.paragraph("On each split:"), H.table(*evaluation_table(files.evaluation))]
    blocks += [H.heading("Dev metrics by step"), H.table(*dev_table(files)),
               H.figure(curves, "each task's primary dev metric and the selection score; dotted lines: stage starts")]
    blocks += _training_blocks(files, starts) + _probe_blocks(files) + _error_blocks(files)
    return H.page(files.run.path.name, blocks)


def _training_blocks(files: RunFiles, starts: list[tuple[int, str]]) -> list[str]:
    blocks = [H.heading("Training")]
    loss, rates = figures.training_loss(files.lines, starts), figures.learning_rates(files.lines, starts)
    if not loss and not rates:
        return blocks + [H.paragraph("metrics.jsonl holds no training records.", "note")]
    header, rows = share_table(files.lines)
    if rows:
        blocks += [H.table(header, rows)]
    return blocks + [H.figure(loss, "training loss per task (faint: each record; bold: smoothed)"),
                     H.figure(rates, "learning rate of every parameter group")]


def _probe_blocks(files: RunFiles) -> list[str]:
    points = probe_points(files.lines)
    blocks = [H.heading("Retention and drift")]
    if not points:
        return blocks + [H.paragraph("No retention probes in this run.", "note")]
    blocks += [H.table(*probe_table(files)),
               H.figure(figures.probes(points), "each probe at each probe point (1.0: the pretrained encoder)"),
               H.figure(figures.weight_changes(points), "relative weight-norm change per group")]
    header, rows = frozen_heads_table(files.results)
    if rows:
        blocks += [H.heading("Heads that never trained", 3), H.table(header, rows)]
    return blocks


def _error_blocks(files: RunFiles) -> list[str]:
    blocks = [H.heading("Where the final model goes wrong")]
    if not files.evaluation:
        return blocks + [H.paragraph(f"No breakdown: {files.no_evaluation}.", "note")]
    shown = []
    for task, splits in files.evaluation["tasks"].items():
        split = files.results.get("splits", {}).get(task, "test" if "test" in splits else "dev")
        detail = (splits.get(split) or {}).get("detail")
        if not detail:
            continue
        if detail["kind"] == "confusion":
            png = figures.confusion_matrix(task, split, detail["labels"], detail["matrix"])
            shown.append(H.figure(png, f"{task}: confusion matrix on {split} (rows gold, columns predicted)"))
        else:
            png = figures.per_type_f1(task, split, detail["types"])
            shown.append(H.figure(png, f"{task}: F1 per type on {split}"))
    return blocks + [H.row(shown)]
