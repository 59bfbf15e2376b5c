"""Weight interpolation after training (WiSE-FT, Wortsman et al. 2022): the encoder at
theta = (1 - alpha) * theta_pretrained + alpha * theta_finetuned, for several alphas, each with its heads fitted again
on the frozen interpolated encoder (the `heads` preset: features computed once, seconds), its dev and test scores and
every retention probe of the run's config. One point per alpha gives the trade-off between task score and
retention; a rule picks an alpha and its model is saved beside the run's own, never over it.

    RUN/interpolate/alpha-<a>/   one heads-only run per alpha (its own results.json, probes, final/)
    RUN/interpolate/interpolate.json, interpolate.png
    RUN/final-interpolated/      the chosen alpha's final/ (with `--save`)
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from thawing.errors import InputError
from thawing.store.atomic import atomic_path, building
from thawing.store.run_dir import FINAL, RunDir
from thawing.training.events import Callback, ScenarioStarted


def interpolate(run_dir: str | Path, alphas: list[float], floor: float | None = None, probe: str | None = None,
                save: bool = True, callbacks: Sequence[Callback] = (), trust_remote_code: bool = False) -> dict:
    """Interpolate a finished run's encoder with its pretrained one at each alpha; returns interpolate.json's content.

    The rule: the best dev selection score among alphas whose retention (the `probe`'s, or the lowest over the
    run's similarity and transfer probes) is at least `floor`; without `floor`, the best dev score.
    """
    from thawing.config import load_config
    from thawing.model.loading import load_encoder
    from thawing.training.loop import train

    run = RunDir.of_model(run_dir)
    run.read_json(run.results)  # a finished run, or a clear error
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas) or len(set(alphas)) != len(alphas):
        raise InputError(f"alphas must be distinct numbers from 0 to 1; got {alphas}")
    config = load_config(run.config)
    if probe is not None and probe not in config.probes:
        raise InputError(f"no probe '{probe}' in the run's config (it has {sorted(config.probes) or 'none'})",
                         path=run.config)
    if floor is not None and not config.probes:
        raise InputError("a retention floor needs probes in the run's config", path=run.config)
    out = run.interpolate_dir
    if out.exists():
        raise InputError("already interpolated; move it away to run again (results are never overwritten)", path=out)
    options = dict(max_length=config.model.max_length, pooling=config.model.pooling,
                   normalize=config.model.normalize, trust_remote_code=trust_remote_code)
    start = load_encoder(config.model.name, **options).state_dict()
    tuned = load_encoder(str(run.encoder_dir), **options).state_dict()
    if start.keys() != tuned.keys():
        raise InputError("the trained encoder does not have the pretrained model's weights", path=run.encoder_dir)
    # Heads are fitted per alpha by the loop; probes are measured here, against the pretrained encoder (the loop
    # would take the interpolated one as its reference).
    heads_only = config.model_copy(update={"schedule": "heads", "name": f"{config.name}-interpolate", "probes": {}})
    probes = _pretrained_probes(config, load_encoder(config.model.name, **options))
    rows = []
    for alpha in sorted(alphas):
        encoder = load_encoder(str(run.encoder_dir), **options)
        # Exact at the ends: alpha 0 gives the pretrained weights, alpha 1 the fine-tuned ones.
        encoder.load_state_dict({k: start[k] if alpha == 0 else tuned[k] if alpha == 1
                                 else (1 - alpha) * start[k] + alpha * tuned[k] for k in start})
        for callback in callbacks:
            callback(ScenarioStarted(f"alpha {alpha}"))
        point = train(heads_only, run_dir=str(out / f"alpha-{alpha:g}"), encoder=encoder, callbacks=callbacks)
        results, stages = point.read_json(point.results), point.read_json(point.stages)
        measured = _measure(probes, encoder, config) if probes else {}
        rows.append({"alpha": alpha, "dev_score": max(s["best_score"] for s in stages), "score": results["score"],
                     "tasks": results["tasks"], "probes": measured, "retention": retention(measured, probe),
                     "run": point.path.name})
    chosen = choose(rows, floor)
    report = {"run": str(run.path), "alphas": sorted(alphas), "floor": floor, "probe": probe, "points": rows,
              "chosen": chosen["alpha"] if chosen else None,
              "rule": "best dev score" + (f" with retention >= {floor}" if floor is not None else "")}
    run.write_json(run.interpolate_json, report)
    plot(rows, chosen, run.interpolate_png)
    keep_chosen(run, rows, chosen if save else None)
    return report


def keep_chosen(run: RunDir, rows: list[dict], chosen: dict | None) -> None:
    """The chosen alpha's model saved beside final/ (`final-interpolated/`, whole or not at all), and no other: a model
    per alpha is a copy of the encoder each."""
    out = run.interpolate_dir
    if chosen is not None:
        target = run.interpolated_final
        if target.exists():
            raise InputError("exists; move it away to save another interpolated model", path=target)
        with building(target) as tmp:
            shutil.copytree(out / chosen["run"] / FINAL, tmp, dirs_exist_ok=True)
    for row in rows:
        shutil.rmtree(out / row["run"] / FINAL, ignore_errors=True)


def _runtime(config, encoder):
    from thawing.model.runtime import resolve

    return resolve(encoder, device=config.train.device, precision=config.train.mixed_precision, packing_=False,
                   training=False)


def _pretrained_probes(config, pretrained):
    """The config's probes with their pretrained side taken from the pretrained encoder; None without probes."""
    from thawing.model.groups import parameter_groups
    from thawing.training.probes import build_probes

    probes = build_probes(config, pretrained, _runtime(config, pretrained))
    if probes is not None:
        probes.start(parameter_groups(pretrained))
    return probes


def _measure(probes, encoder, config) -> dict:
    """Every probe on `encoder`, against the pretrained side, with the pretrained values beside (as results.json)."""
    from thawing.model.groups import parameter_groups
    from thawing.training.probes import build_probes

    probes.encode = build_probes(config, encoder, _runtime(config, encoder)).encode
    return probes.final(probes.measure(parameter_groups(encoder)))


def retention(probes: dict, name: str | None) -> float | None:
    """The probe's retention, or the lowest over similarity and transfer probes (None without any)."""
    values = {p: v[k] for p, v in probes.items() for k in v if k.endswith("_retention") and v[k] is not None}
    if name is not None:
        return values.get(name)
    return min(values.values()) if values else None


def choose(rows: list[dict], floor: float | None) -> dict | None:
    allowed = [r for r in rows if floor is None or (r["retention"] is not None and r["retention"] >= floor)]
    return max(allowed, key=lambda r: (r["dev_score"], -r["alpha"])) if allowed else None


def plot(rows: list[dict], chosen: dict | None, out: Path) -> None:
    """Dev score (what chooses) and test score against retention, one point per alpha (against alpha without
    probes); the chosen alpha circled on both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_retention = all(r["retention"] is not None for r in rows)
    x = (lambda r: r["retention"]) if by_retention else (lambda r: r["alpha"])
    points = sorted(rows, key=x)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, label in (("dev_score", "dev (chooses)"), ("score", "test")):
        ax.plot([x(r) for r in points], [r[key] for r in points], marker="o", label=label)
        if chosen is not None:
            ax.scatter([x(chosen)], [chosen[key]], s=140, facecolors="none", edgecolors="red", zorder=3)
    if by_retention:
        for r in points:
            ax.annotate(f"{r['alpha']:g}", (x(r), r["score"]), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("retention (current / pretrained)" if by_retention else "alpha")
    ax.set_ylabel("selection score")
    title = "weight interpolation" + (f": alpha {chosen['alpha']:g} chosen" if chosen is not None else "")
    ax.set_title(title)
    ax.legend(loc="best")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
