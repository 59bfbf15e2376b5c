"""A tune's outputs, from its Optuna study: tune.json (every trial), best_plan.yaml (the chosen plan as a schedule
file that `thawing train` takes: `schedule: best_plan.yaml`) and report/index.html with report/tune.png (Optuna's
optimisation history for one objective, its Pareto front of the first two for several)."""

from __future__ import annotations

import io
import warnings
from typing import Any

import yaml

from thawing.config import RunConfig
from thawing.reporting import html
from thawing.store.atomic import write_text
from thawing.store.run_dir import RunDir


def trial_rows(study: Any, tune: RunDir, objectives: list[str], chosen: list[int]) -> list[dict]:
    """One row per trial: number, state, params, objective values, times, cost, run directory, plan, and the test
    split's scores for a chosen trial."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        values = dict(zip(objectives, trial.values, strict=True)) if trial.values is not None else None
        row = {"number": trial.number, "state": trial.state.name.lower(), "params": trial.params, "values": values,
               "dev": attrs.get("dev"), "wall_s": attrs.get("wall_s"), "stage_s": attrs.get("stage_s"),
               "cost": attrs.get("cost"), "run": attrs.get("run"), "owner": attrs.get("owner"),
               "plan": attrs.get("plan"), "start": attrs.get("start"), "chosen": trial.number in chosen}
        test = RunDir(tune.path / attrs["run"]).trial_test if attrs.get("run") else None
        if row["chosen"] and test is not None and test.is_file():
            row["test"] = RunDir(tune.path).read_json(test)
        rows.append(row)
    return rows


def write_outputs(tune: RunDir, study: Any, config: RunConfig, chosen: list[int], plan: int | None) -> dict:
    """tune.json, best_plan.yaml (trial `plan`'s, when a trial completed) and the report; returns tune.json's
    content."""
    objectives = study.user_attrs["objectives"]
    rows = trial_rows(study, tune, objectives, chosen)
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    best = next((r for r in rows if r["number"] == plan), None)
    out = {"study": study.study_name, "config": config.name, "objectives": objectives,
           "directions": [d.name.lower() for d in study.directions], "states": states,
           "tolerance": config.tune.tolerance if config.tune else 0.0,
           "wall_s": round(sum(r["wall_s"] or 0.0 for r in rows), 2), "chosen": chosen,
           "best": best["number"] if best else None, "trials": rows}
    tune.write_json(tune.tune_json, out)
    if best is not None:
        write_text(tune.best_plan, yaml.safe_dump(best["plan"], sort_keys=False))
    png = figure(study, objectives)
    tune.report_dir.mkdir(exist_ok=True)
    if png:
        tune.tune_png.write_bytes(png)
    write_text(tune.index_html, page(out, png))
    return out


def summary_line(out: dict) -> str:
    """One line on a finished tune: the trials' states, the chosen plan's dev score and stage time, and the start
    presets' beside it (the plans a user would have run without the search)."""
    counts = ", ".join(f"{n} {state}" for state, n in sorted(out["states"].items()))
    rows = {r["number"]: r for r in out["trials"]}
    if out["best"] is None:
        return f"{counts}; no trial completed"

    def measured(row: dict) -> str:
        score, seconds = (row["values"] or {}).get("score"), row["stage_s"]
        if score is None or seconds is None:
            return row["state"]
        return ("" if row["state"] == "complete" else f"{row['state']}, ") + f"dev {score:.4f}, stages {seconds:.1f} s"

    starts = [f"{r['start']} preset: {measured(r)}" for r in out["trials"] if r.get("start")]
    return (f"{counts}; chosen trial {out['best']}: {measured(rows[out['best']])}"
            + (f" ({'; '.join(starts)})" if starts else ""))


def figure(study: Any, objectives: list[str]) -> bytes | None:
    """Optuna's optimisation history (one objective) or Pareto front (the first two objectives) as PNG bytes; None
    before any trial completed."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as plots

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        if len(objectives) == 1:
            ax = plots.plot_optimization_history(study, target_name="dev score")
        else:
            ax = plots.plot_pareto_front(study, targets=lambda t: (t.values[0], t.values[1]),
                                         target_names=objectives[:2])
    fig: Any = ax.figure
    fig.set_size_inches(7, 4.5)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def page(out: dict, png: bytes | None) -> str:
    objectives = out["objectives"]
    header = ["trial", "state", "shape", *objectives, "stage s", "wall s", "chosen", "test score"]
    rows = []
    for r in out["trials"]:
        values = r["values"] or {}
        start = f" ({r['start']} preset)" if r.get("start") else ""
        rows.append([r["number"], r["state"], r["params"].get("shape", "") + start,
                     *[_fmt(values.get(o)) for o in objectives], _fmt(r["stage_s"]), _fmt(r["wall_s"]),
                     "yes" if r["chosen"] else "", _fmt((r.get("test") or {}).get("score"))])
    counts = ", ".join(f"{n} {state}" for state, n in sorted(out["states"].items()))
    near = f" (the fastest within {out['tolerance']} of the best score)" if out["tolerance"] else ""
    blocks = [html.paragraph(f"Study '{out['study']}': {counts}; objectives {', '.join(objectives)}; trials' wall "
                             f"time {out['wall_s']} s. Trials are chosen on dev{near}; the test split is scored for "
                             "the chosen ones only."),
              html.figure(png, "optimisation history" if len(objectives) == 1 else "Pareto front"),
              html.heading("Trials"), html.table(header, rows)]
    return html.page(f"thawing tune: {out['config']}", blocks)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
