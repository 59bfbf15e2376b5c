"""A run's report: what each stage trained and how every task moved, read back from the run directory alone.

    report/report.md    model, tasks, the stage table, each task's dev metric (first / best / last evaluation),
                        final results
    report/curves.png   each task's primary dev metric, and the selection score, against optimizer steps,
                        with stage boundaries

`thawing train` writes it at the end of a run; `thawing report RUN_DIR` writes it again from the files (the run
directory is the contract: nothing else is read). The folder is built aside and renamed into place.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from thawing.config import read_yaml
from thawing.errors import InputError
from thawing.run_dir import CURVES, REPORT_MD, RunDir

SCORE = "*"  # the task name metrics.jsonl uses for the selection score


def write_report(path: str | Path) -> Path:
    """Write `report/` for the run at `path`; returns the report.md path."""
    run = RunDir(path)
    if not run.results.is_file():
        raise InputError("no results.json: not a finished thawing run directory", path=run.path)
    config = _read_config(run)
    stages, results = run.read_json(run.stages), run.read_json(run.results)
    tasks = run.read_json(run.tasks)
    metrics = [m for m in run.read_metrics() if m.get("split", "dev") == "dev"]
    primary = run.primary_metrics()
    _check_shapes(run, stages, results)
    with run.replacing(run.report_dir) as tmp:
        curves = _plot_curves(metrics, stages, primary, tmp / CURVES)
        (tmp / REPORT_MD).write_text(_markdown(run, config, tasks, stages, results, metrics, primary, curves))
    return run.report_md


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


# ---------------------------------------------------------------------------------------------- markdown


def _markdown(run, config, tasks, stages, results, metrics, primary, curves: bool) -> str:
    model = (config.get("model") or {}).get("name", "?")
    lines = [f"# {run.path.name}", "", f"Model: `{model}`. Tasks:", ""]
    for task, spec in tasks.items():
        lines.append(
            f"- **{task}**: {spec.get('type')}, {len(spec.get('labels', []))} labels, primary metric {primary[task]}"
        )
    lines += [
        "",
        "## Stages",
        "",
        "| stage | trainable parameters | epochs | updates | best dev score | at step | stopped | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        best = "" if s.get("best_score") is None else f"{s['best_score']:.4f}"
        lines.append(
            f"| {s['stage']} | {s.get('trainable_params', 0):,} | {s.get('epochs_run', '')} | {s.get('updates', '')} "
            f"| {best} | {s.get('best_step', '')} | {s.get('stopped', '')} | {s.get('wall_s', '')} s |"
        )
    lines += [
        "",
        "## Each task on dev",
        "",
        "First evaluation, best, and last, in each task's primary metric: a task whose head or encoder stopped "
        "training shows here what it kept.",
        "",
        "| task | metric | first | best | last |",
        "|---|---|---|---|---|",
    ]
    for task, metric in primary.items():
        values = [m["metrics"][metric] for m in metrics if m["task"] == task and metric in m["metrics"]]
        if values:
            lines.append(f"| {task} | {metric} | {values[0]:.4f} | {max(values):.4f} | {values[-1]:.4f} |")
    names = sorted({name for r in results["tasks"].values() for name in r})
    lines += [
        "",
        "## Final model",
        "",
        "| task | split | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for task, values in results["tasks"].items():
        cells = " | ".join(f"{values[n]:.4f}" if n in values else "" for n in names)
        lines.append(f"| {task} | {results.get('splits', {}).get(task, '')} | {cells} |")
    lines += ["", f"Selection score: **{results['score']:.4f}**"]
    if curves:
        lines += ["", "## Curves", "", f"![dev metrics by step]({CURVES})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- plots


def _plot_curves(metrics: list[dict], stages: list[dict], primary: dict[str, str], out: Path) -> bool:
    """One panel per task and one for the selection score; False when there was nothing to plot."""
    if not metrics:
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = [(task, metric) for task, metric in primary.items()] + [(SCORE, "score")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    boundaries = _stage_starts(stages)
    for ax, (task, metric) in zip(axes[0], panels):
        points = [(m["step"], m["metrics"][metric]) for m in metrics if m["task"] == task and metric in m["metrics"]]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3)
        for step, name in boundaries:
            ax.axvline(step, color="grey", linestyle=":", linewidth=1)
            ax.annotate(
                name, (step, 1), xycoords=("data", "axes fraction"), fontsize=7, rotation=90, va="top", ha="right"
            )
        ax.set_title("selection score" if task == SCORE else f"{task} ({metric})", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def _stage_starts(stages: list[dict]) -> list[tuple[int, str]]:
    """(optimizer step at which the stage began, stage name), from each stage's update count."""
    starts, step = [], 0
    for s in stages:
        starts.append((step, s["stage"]))
        step += s.get("updates", 0)
    return starts
