"""A freezing study: the same tasks, data and model under several plans, side by side.

    <study>/<scenario>/   one complete run directory per scenario (its own report/)
    <study>/study.json    per scenario: final metrics per task, selection score, trainable parameters,
                          optimizer updates, wall time
    <study>/study.md      the comparison, with each task's change against the frozen baseline when it ran
    <study>/study.png     each task's primary final metric per scenario

A scenario is a plan preset (`training/stages.py`): frozen (the pretrained encoder as a fixed feature extractor),
heads (backbone frozen), progressive, full. The frozen baseline is what every other scenario must beat, and a
task that falls below it under some plan has lost what the pretrained encoder gave it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from thawing.atomic import atomic_path, write_text
from thawing.config import RunConfig
from thawing.errors import InputError
from thawing.metrics import PRIMARY_METRIC
from thawing.run_dir import RunDir
from thawing.training.stages import PRESETS

BASELINE = "frozen"


def run_study(
    config: RunConfig,
    scenarios: list[str],
    study_dir: str | None = None,
    events: Callable[[str, dict], None] | None = None,
    run_optional: bool | None = None,
) -> RunDir:
    """Train the config once per scenario into one study directory; returns it."""
    from thawing.training.loop import train

    unknown = [s for s in scenarios if s not in PRESETS]
    if unknown or not scenarios or len(set(scenarios)) != len(scenarios):
        raise InputError(f"scenarios must be distinct plan presets ({', '.join(PRESETS)}); got {', '.join(scenarios) or 'none'}")
    study = RunDir.create(f"{config.name}-study", study_dir)
    rows = {}
    for scenario in scenarios:
        if events:
            events("scenario", {"scenario": scenario})
        run = train(config.model_copy(update={"schedule": scenario}), run_dir=str(study.path / scenario), events=events,
                    run_optional=run_optional)
        rows[scenario] = _summary(run)
        study.write_json("study.json", {"config": config.name, "scenarios": rows})  # a study cut short keeps its runs
    write_study_report(study.path)
    return study


def _summary(run: RunDir) -> dict:
    stages, results = run.read_json("stages.json"), run.read_json("results.json")
    types = {t: spec["type"] for t, spec in run.read_json("final/tasks.json").items()}
    return {
        "run": run.path.name,
        "tasks": results["tasks"],
        "splits": results["splits"],
        "primary": {t: PRIMARY_METRIC[kind] for t, kind in types.items()},
        "score": results["score"],
        "trainable_params": max((s.get("trainable_params", 0) for s in stages), default=0),
        "updates": sum(s.get("updates", 0) for s in stages),
        "wall_s": round(sum(s.get("wall_s", 0.0) for s in stages), 1),
    }


def write_study_report(path: str | Path) -> Path:
    """study.md and study.png from study.json; returns the study.md path."""
    study = RunDir(path)
    rows = study.read_json("study.json")["scenarios"]
    if not rows:
        raise InputError("study.json holds no scenario", path=study.path / "study.json")
    tasks = list(next(iter(rows.values()))["primary"].items())
    lines = [f"# {study.path.name}", "",
             "Final metrics of each scenario (each task's primary metric, on test where the task has it, else dev)."]
    if BASELINE in rows:
        lines.append(f"In brackets: the change against the `{BASELINE}` baseline, the pretrained encoder as it came.")
    lines += ["", "| scenario | " + " | ".join(f"{t} ({m})" for t, m in tasks) + " | score | trainable parameters | updates | wall |",
              "|---|" + "---|" * (len(tasks) + 4)]
    for name, row in rows.items():
        lines.append(f"| [{name}]({row['run']}/report/report.md) | " + " | ".join(task_cells(rows, name))
                     + f" | {row['score']:.4f} | {row['trainable_params']:,} | {row['updates']} | {row['wall_s']} s |")
    _plot(rows, tasks, study.path / "study.png")
    lines += ["", "![final metrics per scenario](study.png)"]
    write_text(study.path / "study.md", "\n".join(lines) + "\n")
    return study.path / "study.md"


def task_cells(rows: dict, name: str) -> list[str]:
    """Scenario `name`'s primary metric per task, with its change against the frozen baseline when that ran."""
    base, row = rows.get(BASELINE), rows[name]
    cells = []
    for task, metric in row["primary"].items():
        value = row["tasks"][task][metric]
        delta = f" ({value - base['tasks'][task][metric]:+.4f})" if base and name != BASELINE else ""
        cells.append(f"{value:.4f}{delta}")
    return cells


def _plot(rows: dict, tasks: list[tuple[str, str]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(rows)
    values = [row["tasks"][t][m] for row in rows.values() for t, m in tasks]
    fig, ax = plt.subplots(figsize=(2.5 + 1.2 * len(tasks) * len(rows) ** 0.5, 3.4))
    for i, (name, row) in enumerate(rows.items()):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(tasks))]
        bars = ax.bar(xs, [row["tasks"][t][m] for t, m in tasks], width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(tasks)), [f"{t}\n({m})" for t, m in tasks])
    ax.set_ylim(max(0.0, min(values) - 0.1), max(values) + 0.06)  # the differences, not the distance from 0
    ax.set_ylabel("final metric")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
