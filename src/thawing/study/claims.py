"""The design's claims about freezing, each checked against what a study measured.

Every claim becomes one line: the claim, the numbers measured for it, and a verdict computed from those numbers over
the seeds: "supported" only when every seed's value lies on the claimed side of every seed's value it is compared
with (with one seed, the two points), "not supported by this study" otherwise, and "not measured" when a scenario or
probe the claim needs was not run. A study with overlapping seed ranges therefore supports nothing it cannot show.

The input is the study's rows (`study.json` "scenarios"): per scenario its means and `per_seed` summaries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported by this study"
NOT_MEASURED = "not measured"
# "Matches" and "keeps" allow this much (absolute, on metrics in [0, 1]): one seed moved a plan's score by up to 0.029
# on TREC + SST-2 (docs/benchmarks.md), so a tighter margin would test the seed, not the plan.
TOLERANCE = 0.01
BASELINE = "frozen"
# The retention price (issue #16's goal): keep this share of a similarity probe, within this much of the best score.
KEEP, PRICE = 0.99, 0.003


@dataclass
class Claim:
    claim: str
    measured: str
    status: str

    def line(self) -> str:
        return f"{self.claim} Measured: {self.measured}."

    def to_json(self) -> dict:
        return asdict(self)


def check_claims(rows: dict[str, dict], reference: str | None = None) -> list[Claim]:
    """Every claim the rows can speak to, in the design's order. `reference`: the scenario that ran the config's own
    plan (what head-frozen and single-task scenarios are compared with), if any."""
    ref = reference if reference in rows else None
    return [
        zero_updates(rows),
        *beats_baseline(rows),
        *retention(rows),
        efficiency(rows),
        frozen_encoder_cost(rows),
        *frozen_heads(rows, ref),
        *sharing(rows, ref),
        *anchoring(rows),
        *retention_price(rows),
    ]


# ---------------------------------------------------------------------------------------------- reading rows


def seed_values(row: dict, *path: str) -> list[float] | None:
    """The value at `path` in each seed's summary (the row itself when it has none); None when a seed lacks it."""
    out = []
    for summary in row.get("per_seed") or [row]:
        value = summary
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        out.append(float(value))
    return out or None


def primary_values(row: dict, task: str) -> list[float] | None:
    metric = (row.get("primary") or {}).get(task)
    return seed_values(row, "tasks", task, metric) if metric else None


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def show(values: list[float], percent: bool = False, signed: bool = False, digits: int = 4) -> str:
    """The mean, and the range over seeds when there are several: 0.8880 [0.8800 to 0.8940]."""
    def one(v: float) -> str:
        return f"{v:+.1%}" if percent and signed else f"{v:.1%}" if percent else f"{v:+.{digits}f}" if signed \
            else f"{v:.{digits}f}"

    text = one(mean(values))
    return text if len(values) == 1 else f"{text} [{one(min(values))} to {one(max(values))}]"


def share(fraction: float) -> str:
    """A ratio as a percentage, with the digits a small one needs: 62%, 0.36%."""
    return f"{fraction:.0%}" if fraction >= 0.1 else f"{fraction:.2%}"


def above(high: list[float], low: list[float], margin: float = 0.0) -> bool:
    """Every value of `high` above every value of `low`; with a margin, at least `low`'s highest less the margin."""
    return min(high) > max(low) if not margin else min(high) >= max(low) - margin


def verdict(ok: bool) -> str:
    return SUPPORTED if ok else NOT_SUPPORTED


# ---------------------------------------------------------------------------------------------- the claims


def zero_updates(rows: dict) -> Claim:
    claim = "Whole network frozen means zero gradient updates (the frozen baseline)."
    values = seed_values(rows[BASELINE], "updates") if BASELINE in rows else None
    if values is None:
        return Claim(claim, "no frozen scenario ran", NOT_MEASURED)
    return Claim(claim, f"{BASELINE} ran {show(values, digits=0)} optimizer updates", verdict(max(values) == 0))


def beats_baseline(rows: dict) -> list[Claim]:
    """Each trained scenario against the pretrained encoder as a fixed feature extractor."""
    base = rows.get(BASELINE)
    others = [n for n, r in rows.items() if n != BASELINE and r.get("kind") != "single-task"]
    if base is None:
        return [Claim("Training beats the frozen baseline.", "no frozen scenario ran", NOT_MEASURED)] if others else []
    out, base_scores = [], seed_values(base, "score")
    for name in others:
        row, scores = rows[name], seed_values(rows[name], "score")
        claim = f"Training beats the frozen baseline: {name} scores above {BASELINE}."
        if scores is None or base_scores is None:
            out.append(Claim(claim, "no selection score recorded", NOT_MEASURED))
            continue
        below = [t for t in row.get("primary", {})
                 if (v := primary_values(row, t)) and (b := primary_values(base, t)) and not above(v, b)]
        seeds = " in every seed" if len(scores) > 1 else ""
        note = f"; tasks not above {BASELINE}{seeds}: {', '.join(below)}" if below else ""
        out.append(Claim(claim, f"selection score {show(scores)} against {show(base_scores)}{note}",
                         verdict(above(scores, base_scores))))
    return out


def _headline(row: dict, probe: str) -> tuple[str, list[float]] | None:
    """A probe's retention over the seeds (or its drift, for a drift probe)."""
    metrics = (row.get("probes") or {}).get(probe) or {}
    name = next((k for k in metrics if k.endswith("_retention")), "drift" if "drift" in metrics else None)
    values = seed_values(row, "probes", probe, name) if name else None
    return (name, values) if values else None


def retention(rows: dict) -> list[Claim]:
    """Progressive against full fine-tuning, per probe: what each kept of the pretrained encoder."""
    claim = "Progressive unfreezing forgets less than full fine-tuning."
    names = sorted({p for r in rows.values() for p in (r.get("probes") or {})})
    if not names:
        return [Claim(claim, "no retention probe in the study (the config has none)", NOT_MEASURED)]
    if "progressive" not in rows or "full" not in rows:
        return [Claim(claim, "needs the progressive and full scenarios", NOT_MEASURED)]
    out = []
    for probe in names:
        prog, full = _headline(rows["progressive"], probe), _headline(rows["full"], probe)
        if prog is None or full is None:
            out.append(Claim(claim, f"probe {probe} not recorded in both scenarios", NOT_MEASURED))
        elif prog[0] == "drift":
            out.append(Claim(claim, f"progressive's weights drifted {show(prog[1])} ({probe}); full fine-tuning's "
                                    f"{show(full[1])}", verdict(above(full[1], prog[1]))))
        else:
            base = prog[0][: -len("_retention")]
            out.append(Claim(claim, f"progressive kept {show(prog[1], percent=True)} of the pretrained {probe} {base}; "
                                    f"full fine-tuning kept {show(full[1], percent=True)}",
                             verdict(above(prog[1], full[1]))))
    return out


def efficiency(rows: dict) -> Claim:
    claim = f"Progressive unfreezing reaches full fine-tuning's score (within {TOLERANCE}) in less training time."
    if "progressive" not in rows or "full" not in rows:
        return Claim(claim, "needs the progressive and full scenarios", NOT_MEASURED)
    ps, fs = seed_values(rows["progressive"], "score"), seed_values(rows["full"], "score")
    pt, ft = seed_values(rows["progressive"], "wall_s"), seed_values(rows["full"], "wall_s")
    if not (ps and fs and pt and ft):
        return Claim(claim, "scores or times not recorded", NOT_MEASURED)
    measured = (f"progressive reached {mean(ps) / mean(fs):.1%} of full's score ({show(ps)} vs {show(fs)}) in "
                f"{share(mean(pt) / mean(ft))} of its training time ({show(pt, digits=1)} s vs {show(ft, digits=1)} s)")
    return Claim(claim, measured, verdict(above(ps, fs, TOLERANCE) and above(ft, pt)))


def frozen_encoder_cost(rows: dict) -> Claim:
    claim = "A frozen encoder is computed once, so heads-only training takes less time than full fine-tuning."
    if "heads" not in rows or "full" not in rows:
        return Claim(claim, "needs the heads and full scenarios", NOT_MEASURED)
    ht, ft = seed_values(rows["heads"], "wall_s"), seed_values(rows["full"], "wall_s")
    if not (ht and ft):
        return Claim(claim, "times not recorded", NOT_MEASURED)
    params = rows["heads"].get("trainable_params", 0) / max(1, rows["full"].get("trainable_params", 0))
    measured = (f"heads trained {share(params)} of full's parameters in {share(mean(ht) / mean(ft))} of its training "
                f"time ({show(ht, digits=1)} s vs {show(ft, digits=1)} s)")
    return Claim(claim, measured, verdict(above(ft, ht)))


def frozen_heads(rows: dict, reference: str | None) -> list[Claim]:
    """A head frozen throughout: its task's metric while the encoder trained (design: its loss still reaches the
    encoder, and its metric is tracked so retention is visible)."""
    out = []
    for name, row in rows.items():
        if row.get("kind") != "head-frozen":
            continue
        task = row["task"]
        metric = (row.get("primary") or {}).get(task, "metric")
        claim = (f"A frozen head still works as the shared encoder trains: with the {task} head frozen, {task} keeps "
                 f"its {metric} (change at least -{TOLERANCE}).")
        change = seed_values(row, "frozen_heads", task, "change")
        if change is None:
            out.append(Claim(claim, f"{name}: results.json records no frozen head for {task}", NOT_MEASURED))
            continue
        start, end = seed_values(row, "frozen_heads", task, "start"), seed_values(row, "frozen_heads", task, "end")
        measured = f"{name}: {task}'s {metric} went from {show(start)} to {show(end)} ({show(change, signed=True)})"
        mine, theirs = primary_values(row, task), primary_values(rows[reference], task) if reference else None
        if mine and theirs:
            measured += (f"; freezing its head changed its final {metric} by {mean(mine) - mean(theirs):+.4f} "
                         f"against {reference}")
        out.append(Claim(claim, measured, verdict(min(change) >= -TOLERANCE)))
    return out


def sharing(rows: dict, reference: str | None) -> list[Claim]:
    """Each task in the shared encoder against the same plan on that task alone."""
    singles = {r["task"]: r for r in rows.values() if r.get("kind") == "single-task"}
    if not singles:
        return []
    out = []
    for task, single in singles.items():
        metric = (single.get("primary") or {}).get(task, "metric")
        claim = (f"Sharing one encoder costs {task} little: multi-task it stays within {TOLERANCE} of its "
                 f"single-task {metric}.")
        if reference is None:
            out.append(Claim(claim, "no scenario ran the config's own plan with every task", NOT_MEASURED))
            continue
        multi, alone = primary_values(rows[reference], task), primary_values(single, task)
        if not (multi and alone):
            out.append(Claim(claim, f"{task}'s {metric} not recorded", NOT_MEASURED))
            continue
        measured = (f"{reference} {show(multi)} with every task, {show(alone)} alone "
                    f"({mean(multi) / mean(alone):.1%} of it)")
        out.append(Claim(claim, measured, verdict(above(multi, alone, TOLERANCE))))
    return out


def anchoring(rows: dict) -> list[Claim]:
    """Each anchored scenario (`full+distill`) against the scenario it anchors: what it kept, what it cost."""
    out = []
    for name, row in rows.items():
        base = row.get("base")
        if base is None:
            continue
        claim = f"Anchoring keeps more of the pretrained encoder: {name} forgets less than {base}."
        if base not in rows:
            out.append(Claim(claim, f"needs the {base} scenario", NOT_MEASURED))
            continue
        scores, base_scores = seed_values(row, "score"), seed_values(rows[base], "score")
        cost = f"; score {show(scores)} against {show(base_scores)}" if scores and base_scores else ""
        for probe in sorted(row.get("probes") or {}):
            mine, theirs = _headline(row, probe), _headline(rows[base], probe)
            if mine is None or theirs is None:
                out.append(Claim(claim, f"probe {probe} not recorded in both scenarios", NOT_MEASURED))
            elif mine[0] == "drift":
                out.append(Claim(claim, f"{name} drifted {show(mine[1])} ({probe}), {base} {show(theirs[1])}{cost}",
                                 verdict(above(theirs[1], mine[1]))))
            else:
                out.append(Claim(claim, f"{name} kept {show(mine[1], percent=True)} of the pretrained {probe}, "
                                        f"{base} {show(theirs[1], percent=True)}{cost}",
                                 verdict(above(mine[1], theirs[1]))))
    return out


def retention_price(rows: dict) -> list[Claim]:
    """Per similarity probe: the best score among scenarios that kept `KEEP` of it in every seed, against the best
    score of any scenario. Only studies that try to keep something (anchored or interpolated rows) make this claim."""
    if not any(r.get("base") or r.get("kind") == "interpolated" for r in rows.values()):
        return []
    scores = {n: v for n, r in rows.items() if r.get("kind") != "single-task" and (v := seed_values(r, "score"))}
    best = max(scores, key=lambda n: mean(scores[n]), default=None)
    probes = sorted({p for n in scores for p, m in (rows[n].get("probes") or {}).items() if "spearman_retention" in m})
    out = []
    for probe in probes:
        claim = (f"Keeping {KEEP:.0%} of the pretrained {probe} Spearman costs at most {PRICE * 100:.1f} points of "
                 f"task score.")
        retained = {n: v for n in scores if (v := seed_values(rows[n], "probes", probe, "spearman_retention"))}
        top = f"the best score is {best}'s, {show(scores[best])}"
        kept = [n for n, v in retained.items() if min(v) >= KEEP]
        if not kept:
            closest = max(retained, key=lambda n: min(retained[n]), default=None)
            where = f"; the most kept is {closest}'s, {show(retained[closest], percent=True)}" if closest else ""
            out.append(Claim(claim, f"no scenario kept {KEEP:.0%} in every seed; {top}{where}", NOT_SUPPORTED))
            continue
        choice = max(kept, key=lambda n: mean(scores[n]))
        price = mean(scores[best]) - mean(scores[choice])
        measured = (f"{top}; the best that kept {KEEP:.0%} is {choice}'s, {show(scores[choice])}, keeping "
                    f"{show(retained[choice], percent=True)}: a price of {price * 100:.2f} points")
        out.append(Claim(claim, measured, verdict(price <= PRICE)))
    return out
