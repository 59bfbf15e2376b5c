"""A freezing study: the same tasks, data and model under several plans, side by side.

    <study>/<scenario>/   one complete run directory per scenario (its own report/); <scenario>-seed<k>/ with --seeds
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
from thawing.run_dir import REPORT, REPORT_MD, STUDY_PNG, RunDir
from thawing.training.stages import PRESETS

BASELINE = "frozen"


def run_study(
    config: RunConfig,
    scenarios: list[str],
    study_dir: str | None = None,
    events: Callable[[str, dict], None] | None = None,
    run_optional: bool | None = None,
    seeds: list[int] | None = None,
) -> RunDir:
    """Train the config once per scenario (and seed) into one study directory; returns it.

    With several seeds (`train.seed`, which also draws carved dev splits) each scenario's figures are the mean
    over seeds, with their spread: one seed can move a comparison by more than the difference it shows.
    """
    from thawing.training.loop import train

    unknown = [s for s in scenarios if s not in PRESETS]
    if unknown or not scenarios or len(set(scenarios)) != len(scenarios):
        raise InputError(
            f"scenarios must be distinct plan presets ({', '.join(PRESETS)}); got {', '.join(scenarios) or 'none'}"
        )
    seeds = seeds or [config.train.seed]
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seeds must be distinct; got {seeds}")
    study = RunDir.create(f"{config.name}-study", study_dir)
    runs: dict[str, list[dict]] = {}
    for scenario in scenarios:
        for seed in seeds:
            if events:
                events("scenario", {"scenario": scenario if len(seeds) == 1 else f"{scenario}, seed {seed}"})
            name = scenario if len(seeds) == 1 else f"{scenario}-seed{seed}"
            cfg = config.model_copy(
                update={"schedule": scenario, "train": config.train.model_copy(update={"seed": seed})}
            )
            run = train(cfg, run_dir=str(study.path / name), events=events, run_optional=run_optional)
            runs.setdefault(scenario, []).append(_summary(run, seed))
            rows = {key: _combine(per_seed) for key, per_seed in runs.items()}
            # a study cut short keeps its runs
            study.write_json(study.study_json, {"config": config.name, "seeds": seeds, "scenarios": rows})
    write_study_report(study.path)
    return study


def _combine(per_seed: list[dict]) -> dict:
    """One scenario over its seeds: mean metrics and score, each task metric's range, the runs themselves."""
    first = per_seed[0]
    tasks = {
        t: {m: sum(r["tasks"][t][m] for r in per_seed) / len(per_seed) for m in values}
        for t, values in first["tasks"].items()
    }
    spread = {
        t: {m: [min(r["tasks"][t][m] for r in per_seed), max(r["tasks"][t][m] for r in per_seed)] for m in values}
        for t, values in first["tasks"].items()
    }
    return {
        "run": first["run"],
        "primary": first["primary"],
        "splits": first["splits"],
        "tasks": tasks,
        "spread": spread,
        "score": sum(r["score"] for r in per_seed) / len(per_seed),
        "trainable_params": first["trainable_params"],
        "updates": round(sum(r["updates"] for r in per_seed) / len(per_seed)),
        "wall_s": round(sum(r["wall_s"] for r in per_seed) / len(per_seed), 1),
        "per_seed": per_seed,
    }


def _summary(run: RunDir, seed: int) -> dict:
    stages, results = run.read_json(run.stages), run.read_json(run.results)
    return {
        "run": run.path.name,
        "seed": seed,
        "tasks": results["tasks"],
        "splits": results["splits"],
        "primary": run.primary_metrics(),
        "score": results["score"],
        "trainable_params": max((s.get("trainable_params", 0) for s in stages), default=0),
        "updates": sum(s.get("updates", 0) for s in stages),
        "wall_s": round(sum(s.get("wall_s", 0.0) for s in stages), 1),
    }


def write_study_report(path: str | Path) -> Path:
    """study.md and study.png from study.json; returns the study.md path."""
    study = RunDir(path)
    data = study.read_json(study.study_json)
    rows = data["scenarios"]
    if not rows:
        raise InputError("study.json holds no scenario", path=study.study_json)
    tasks = list(next(iter(rows.values()))["primary"].items())
    seeds = data.get("seeds", [None])
    lines = [
        f"# {study.path.name}",
        "",
        "Final metrics of each scenario (each task's primary metric, on test where the task has it, else dev).",
    ]
    if len(seeds) > 1:
        lines.append(f"Means over seeds {', '.join(map(str, seeds))}, with their range in square brackets.")
    if BASELINE in rows:
        lines.append(
            f"In parentheses: the change against the `{BASELINE}` baseline, the pretrained encoder as it came."
        )
    lines += [
        "",
        "| scenario | "
        + " | ".join(f"{t} ({m})" for t, m in tasks)
        + " | score | trainable parameters | updates | wall |",
        "|---|" + "---|" * (len(tasks) + 4),
    ]
    for name, row in rows.items():
        lines.append(
            f"| [{name}]({row['run']}/{REPORT}/{REPORT_MD}) | "
            + " | ".join(task_cells(rows, name))
            + f" | {row['score']:.4f} | {row['trainable_params']:,} | {row['updates']} | {row['wall_s']} s |"
        )
    _plot(rows, tasks, study.study_png)
    lines += ["", f"![final metrics per scenario]({STUDY_PNG})"]
    write_text(study.study_md, "\n".join(lines) + "\n")
    return study.study_md


def task_cells(rows: dict, name: str) -> list[str]:
    """Scenario `name`'s primary metric per task (the mean, and its range over seeds when there are several), with
    its change against the frozen baseline when that ran."""
    base, row = rows.get(BASELINE), rows[name]
    cells = []
    for task, metric in row["primary"].items():
        value = row["tasks"][task][metric]
        low, high = row.get("spread", {}).get(task, {}).get(metric, (value, value))
        spread = f" [{low:.4f}-{high:.4f}]" if len(row.get("per_seed", [])) > 1 else ""
        delta = f" ({value - base['tasks'][task][metric]:+.4f})" if base and name != BASELINE else ""
        cells.append(f"{value:.4f}{spread}{delta}")
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
        means = [row["tasks"][t][m] for t, m in tasks]
        ranges = [row.get("spread", {}).get(t, {}).get(m, (v, v)) for (t, m), v in zip(tasks, means)]
        errors = [[v - lo for v, (lo, _) in zip(means, ranges)], [hi - v for v, (_, hi) in zip(means, ranges)]]
        bars = ax.bar(xs, means, width, label=name, yerr=errors if any(map(any, errors)) else None, capsize=2)
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
