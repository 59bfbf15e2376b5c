"""A freezing study: the same tasks, data and model under several plans, side by side.

    <study>/<scenario>/      one complete run directory per scenario (its own report/); <scenario>-seed<k>/ with
                             several seeds; ':' in a scenario's name becomes '-' (head-frozen-sentiment/)
    <study>/study.json       per scenario: each task's dev and test metrics, every retention probe, the selection
                             score, trainable parameters, updates, wall time, peak memory, each task's share of the
                             updates and its metric against its single-task run; then the claims (`claims.py`)
    <study>/study.md         the comparison, ending with the design's claims as measured lines
    <study>/study.png        each task's primary final metric per scenario
    <study>/report/index.html  one self-contained page: the tables, bar charts of score, retention and time, claims

Scenarios (`scenarios.py`): the plan presets (frozen, heads, progressive, full), the config's own plan (`config`),
`head-frozen:<task>`, `single:<task>`, `NAME=schedule.yaml`, and any of them anchored (`full+distill`, `+l2sp`).
Each is checked, and its plan resolved against the model, before the first one trains. Each trains in its own
process by default, so that its peak memory is its own (`measure.py`); they share the frozen-feature disk cache,
whose keys hold the encoder's weights. `interpolate=<scenario>` adds that scenario's WiSE-FT curve (`interpolate.py`,
once per seed, in this process) as one row per alpha, `<scenario>@<alpha>`, so the claims can price retention in
task points.
"""

from __future__ import annotations

from collections.abc import Sequence

from thawing.config import RunConfig
from thawing.errors import InputError
from thawing.store.metric_lines import task_shares
from thawing.store.run_dir import RunDir
from thawing.study.measure import train_isolated, train_measured
from thawing.study.report import study_json, write_study_report
from thawing.study.scenarios import OWN_PLAN, Scenario, check_plans, parse_scenarios
from thawing.training.events import Callback, ScenarioStarted

DEFAULT_SCENARIOS = ("frozen", "heads", "progressive", "full")
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Per seed, the figures averaged over seeds (with their range); memory is the highest seed's instead.
AVERAGED = ("tasks", "dev", "test", "probes", "frozen_heads", "task_share", "score", "dev_score", "updates",
            "wall_s", "process_s", "probe_seconds")
PEAKS = ("rss_peak_bytes", "process_rss_peak_bytes", "gpu_peak_bytes")


def run_study(
    config: RunConfig,
    scenarios: list[str],
    study_dir: str | None = None,
    callbacks: Sequence[Callback] = (),
    run_optional: bool | None = None,
    seeds: list[int] | None = None,
    isolate: bool = True,
    interpolate: str | None = None,
    alphas: list[float] | None = None,
) -> RunDir:
    """Train the config once per scenario (and seed) into one study directory; returns it.

    With several seeds (`train.seed`, which also draws carved dev splits) each scenario's figures are the mean over
    seeds, with their range: one seed can move a comparison by more than the difference it shows. `isolate` trains
    each scenario in its own process (its peak CPU memory measured alone); without it, in this one (no CPU memory).
    `interpolate`: a scenario whose runs are then interpolated with the pretrained encoder at `alphas` (default 0,
    0.25, 0.5, 0.75, 1), each alpha a row of its own.

    Raises:
        InputError, ConfigError: a bad scenario, seed list, schedule file or plan, before anything trains.
    """
    seeds = seeds or [config.train.seed]
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seeds must be distinct; got {seeds}")
    parsed, plans = prepare_scenarios(config, scenarios, run_optional)
    alphas = sorted(alphas or DEFAULT_ALPHAS)
    if interpolate is not None and interpolate not in [s.name for s in parsed]:
        raise InputError(f"interpolate: '{interpolate}' is not one of the study's scenarios")
    if interpolate is not None and (any(not 0 <= a <= 1 for a in alphas) or len(set(alphas)) != len(alphas)):
        raise InputError(f"alphas must be distinct numbers from 0 to 1; got {alphas}")
    study = RunDir.create(f"{config.name}-study", study_dir)
    reference = reference_scenario(config, [s.name for s in parsed])
    rows: dict[str, dict] = {}
    for scenario in parsed:
        per_seed = []
        for seed in seeds:
            for callback in callbacks:
                callback(ScenarioStarted(scenario.name if len(seeds) == 1 else f"{scenario.name}, seed {seed}"))
            run_dir = str(study.path / (scenario.dir_name if len(seeds) == 1 else f"{scenario.dir_name}-seed{seed}"))
            cfg = scenario.config.model_copy(update={"train": scenario.config.train.model_copy(update={"seed": seed})})
            measured = (train_isolated(cfg, run_dir, study.path, run_optional) if isolate
                        else train_measured(cfg, run_dir, callbacks, run_optional))
            per_seed.append(summarize_run(RunDir(run_dir), seed, measured))
            rows[scenario.name] = combine(per_seed, scenario, plans[scenario.name])
            # a study cut short keeps its runs, and study.json says what they measured
            study.write_json(study.study_json, study_json(config.name, seeds, rows, reference, isolate))
    if interpolate is not None:
        source = next(s for s in parsed if s.name == interpolate)
        # the study's own config opted in to the model's code (or not): interpolation runs it as training did
        trust = config.model.trust_remote_code
        for alpha, per_seed in interpolated(study, rows[interpolate], alphas, callbacks, trust).items():
            scenario = Scenario(f"{interpolate}@{alpha:g}", "interpolated", source.config, source=interpolate)
            rows[scenario.name] = {**combine(per_seed, scenario, plans[interpolate]), "alpha": alpha}
        study.write_json(study.study_json, study_json(config.name, seeds, rows, reference, isolate))
    write_study_report(study.path)
    return study


def interpolated(study: RunDir, row: dict, alphas: list[float], callbacks: Sequence[Callback] = (),
                 trust_remote_code: bool = False) -> dict[float, list[dict]]:
    """Each seed's run of a scenario interpolated at each alpha (`interpolate.py`, heads re-fitted on the frozen
    interpolated encoder): per alpha, one summary per seed, the run's own with the alpha's scores and probes."""
    from thawing.study.interpolate import interpolate

    out: dict[float, list[dict]] = {a: [] for a in alphas}
    for summary in row["per_seed"]:
        run = RunDir(study.path / summary["run"])
        curve = interpolate(run.path, alphas, save=False, callbacks=callbacks, trust_remote_code=trust_remote_code)
        for point in curve["points"]:
            where = (run.interpolate_dir / point["run"]).relative_to(study.path)
            # The scenario's training cost stays (the curve is built on it); its splits' metrics and peaks do not.
            dropped = ("dev", "test", "frozen_heads", "task_share", "process_s", *PEAKS)
            kept = {k: v for k, v in summary.items() if k not in dropped}
            out[point["alpha"]].append({**kept, "run": str(where), "score": point["score"],
                                        "dev_score": point["dev_score"], "tasks": point["tasks"],
                                        "probes": point["probes"] or None})
    return out


def prepare_scenarios(config: RunConfig, specs: list[str], run_optional: bool | None
                      ) -> tuple[list[Scenario], dict[str, list[dict]]]:
    """Check every scenario's name first (instantly), then load the data and model once to resolve each plan."""
    from thawing.config.tasks import load_tasks
    from thawing.model.freezing import layer_names
    from thawing.model.groups import parameter_groups
    from thawing.training.setup import build_model

    parse_scenarios(config, specs, None)
    model = build_model(config, load_tasks(config.tasks, seed=config.train.seed, small=config.train.small_data))
    groups = parameter_groups(model)
    scenarios = parse_scenarios(config, specs, len(layer_names(groups)))
    return scenarios, check_plans(scenarios, groups, run_optional, model)


def reference_scenario(config: RunConfig, names: list[str]) -> str | None:
    """The scenario that ran the config's own plan with every task, which head-frozen and single-task scenarios are
    compared with: `config`, or the preset the config names."""
    if OWN_PLAN in names:
        return OWN_PLAN
    return config.schedule if isinstance(config.schedule, str) and config.schedule in names else None


def summarize_run(run: RunDir, seed: int, measured: dict) -> dict:
    """One run, from its own files: results.json, stages.json, metrics.jsonl, report/evaluation.json."""
    stages, results = run.read_json(run.stages), run.read_json(run.results)
    evaluation = run.read_json(run.evaluation) if run.evaluation.is_file() else {"tasks": {}}
    by_split = {split: {t: e[split]["metrics"] for t, e in evaluation["tasks"].items() if split in e}
                for split in ("dev", "test")}
    summary = {
        "run": run.path.name,
        "seed": seed,
        "primary": run.primary_metrics(),
        "splits": results["splits"],
        "tasks": results["tasks"],
        **{split: values for split, values in by_split.items() if values},
        "score": results["score"],
        "probes": results.get("probes"),
        "probe_seconds": results.get("probe_seconds"),
        "frozen_heads": results.get("frozen_heads"),
        "task_share": task_shares(run.read_metrics()),
        "trainable_params": max((s.get("trainable_params", 0) for s in stages), default=0),
        "updates": sum(s.get("updates", 0) for s in stages),
        "wall_s": round(sum(s.get("wall_s", 0.0) for s in stages), 2),
        **measured,
    }
    return {k: v for k, v in summary.items() if v is not None}


def mean_and_range(values: list) -> tuple[object, object]:
    """The mean of numbers (nested in dicts alike) over seeds, and their [min, max]; other leaves (a metric's name)
    are the first seed's, with no range. A key missing from a seed is left out."""
    first = values[0]
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(v, dict) and k in v for v in values)]
        pairs = {k: mean_and_range([v[k] for v in values]) for k in keys}
        return {k: m for k, (m, _) in pairs.items()}, {k: r for k, (_, r) in pairs.items() if r is not None}
    if (isinstance(first, (int, float)) and not isinstance(first, bool)
            and all(isinstance(v, (int, float)) for v in values)):
        return sum(values) / len(values), [min(values), max(values)]
    return first, None


def combine(per_seed: list[dict], scenario: Scenario, plan: list[dict]) -> dict:
    """One scenario over its seeds: the means, their ranges (`spread`), the peak memory, and the runs themselves."""
    first = per_seed[0]
    averaged = {k: [s[k] for s in per_seed] for k in AVERAGED if all(k in s for s in per_seed)}
    means, spread = mean_and_range([{k: v[i] for k, v in averaged.items()} for i in range(len(per_seed))])
    peaks = {k: max(s[k] for s in per_seed) for k in PEAKS if all(s.get(k) is not None for s in per_seed)}
    return {
        "scenario": scenario.name,
        **scenario.describe(),
        "plan": plan,
        "run": first["run"],
        "primary": first["primary"],
        "splits": first["splits"],
        "trainable_params": first["trainable_params"],
        **means,
        **peaks,
        "spread": spread,
        "per_seed": per_seed,
    }
