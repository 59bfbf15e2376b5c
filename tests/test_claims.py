"""The design's claims as measured lines: verdicts computed from hand-made study rows, both ways, and "not measured"
when a scenario or probe is missing.

Run: `.venv/bin/python -m pytest -q tests/test_claims.py`
"""

from __future__ import annotations

import pytest

from thawing.study.claims import NOT_MEASURED, NOT_SUPPORTED, SUPPORTED, TOLERANCE, check_claims


def row(scores, wall=(10.0,), updates=(5,), probes=None, kind="preset", task=None, tasks=None, frozen_heads=None,
        trainable=1000):
    """A study row over len(scores) seeds: per-seed score, wall time, updates, probes {name: [metrics per seed]},
    tasks {task: [accuracy per seed]}, frozen_heads {task: [(start, end) per seed]}."""
    seeds = []
    tasks = tasks or {"sentiment": list(scores)}
    for i, score in enumerate(scores):
        seed = {"score": score, "wall_s": wall[i % len(wall)], "updates": updates[i % len(updates)],
                "tasks": {t: {"accuracy": v[i]} for t, v in tasks.items()}}
        if probes:
            seed["probes"] = {name: values[i] for name, values in probes.items()}
        if frozen_heads:
            seed["frozen_heads"] = {t: {"metric": "accuracy", "start": v[i][0], "end": v[i][1],
                                        "change": v[i][1] - v[i][0]} for t, v in frozen_heads.items()}
        seeds.append(seed)
    out = {"kind": kind, "primary": {t: "accuracy" for t in tasks}, "trainable_params": trainable,
           "per_seed": seeds, "score": sum(scores) / len(scores),
           "tasks": {t: {"accuracy": sum(v) / len(v)} for t, v in tasks.items()}}
    if probes:
        out["probes"] = {name: values[0] for name, values in probes.items()}
    if task:
        out["task"] = task
    return out


def find(claims, start):
    return [c for c in claims if c.claim.startswith(start)]


def sts(*retentions):
    return {"stsb": [{"spearman": 0.8 * r, "spearman_retention": r} for r in retentions]}


def drift(*values):
    return {"drift": [{"drift": v, "weight_norm_change": {"layers.0": v}} for v in values]}


def test_a_study_without_scenarios_measures_nothing_it_claims():
    claims = check_claims({"heads": row([0.8])})
    assert {c.status for c in claims} == {NOT_MEASURED}
    assert "no frozen scenario" in find(claims, "Whole network frozen")[0].measured


def test_frozen_baseline_updates_and_beating_it():
    rows = {"frozen": row([0.70, 0.71], updates=(0,)), "heads": row([0.75, 0.80]), "full": row([0.69, 0.90])}
    claims = check_claims(rows)
    assert find(claims, "Whole network frozen")[0].status == SUPPORTED
    beats = {c.claim.split(": ")[1].split()[0]: c for c in find(claims, "Training beats")}
    assert beats["heads"].status == SUPPORTED  # 0.75 and 0.80 both above 0.71
    assert beats["full"].status == NOT_SUPPORTED  # the mean is higher, but one seed (0.69) is not above 0.71
    assert "0.7950 [0.6900 to 0.9000]" in beats["full"].measured
    rows["frozen"] = row([0.70], updates=(3,))
    assert find(check_claims(rows), "Whole network frozen")[0].status == NOT_SUPPORTED


def test_progressive_forgets_less_than_full_per_probe():
    rows = {"progressive": row([0.88, 0.89], probes={**sts(0.97, 0.96), **drift(0.02, 0.03)}),
            "full": row([0.89, 0.90], probes={**sts(0.88, 0.90), **drift(0.10, 0.12)})}
    claims = find(check_claims(rows), "Progressive unfreezing forgets less")
    by_probe = {("drift" if "drift" in c.measured else "stsb"): c for c in claims}
    assert by_probe["stsb"].status == SUPPORTED
    assert "progressive kept 96.5% [96.0% to 97.0%] of the pretrained stsb spearman" in by_probe["stsb"].measured
    assert "full fine-tuning kept 89.0%" in by_probe["stsb"].measured
    assert by_probe["drift"].status == SUPPORTED  # progressive drifted less in every seed

    rows["full"] = row([0.89, 0.90], probes={**sts(0.95, 0.99), **drift(0.025, 0.2)})  # ranges overlap
    assert {c.status for c in find(check_claims(rows), "Progressive unfreezing forgets less")} == {NOT_SUPPORTED}


def test_retention_not_measured_without_probes_or_scenarios():
    no_probes = {"progressive": row([0.8]), "full": row([0.8])}
    assert find(check_claims(no_probes), "Progressive unfreezing forgets")[0].status == NOT_MEASURED
    no_full = {"progressive": row([0.8], probes=sts(0.9))}
    claim = find(check_claims(no_full), "Progressive unfreezing forgets")[0]
    assert claim.status == NOT_MEASURED and "full" in claim.measured


@pytest.mark.parametrize("progressive, wall, expected", [
    ([0.885, 0.886], (40.0, 45.0), SUPPORTED),  # within the tolerance of full's best seed, faster in every seed
    ([0.85, 0.886], (40.0, 45.0), NOT_SUPPORTED),  # one seed falls short by more than the tolerance
    ([0.885, 0.886], (40.0, 95.0), NOT_SUPPORTED),  # one seed took longer than full's fastest
])
def test_progressive_reaches_full_in_less_time(progressive, wall, expected):
    rows = {"progressive": row(progressive, wall=wall), "full": row([0.890, 0.894], wall=(90.0, 100.0))}
    claim = find(check_claims(rows), "Progressive unfreezing reaches")[0]
    assert claim.status == expected
    ratio = (sum(progressive) / 2) / 0.892
    assert f"progressive reached {ratio:.1%} of full's score" in claim.measured
    assert f"{TOLERANCE}" in claim.claim


def test_frozen_encoder_is_cheaper():
    rows = {"heads": row([0.8], wall=(3.0,), trainable=10), "full": row([0.9], wall=(30.0,), trainable=1000)}
    claim = find(check_claims(rows), "A frozen encoder")[0]
    assert claim.status == SUPPORTED and "heads trained 1.00% of full's parameters in 10%" in claim.measured
    rows["heads"] = row([0.8], wall=(31.0,))
    assert find(check_claims(rows), "A frozen encoder")[0].status == NOT_SUPPORTED


def test_frozen_head_keeps_its_task_and_is_compared_with_the_plan():
    tasks = {"sentiment": [0.80, 0.82], "topic": [0.9, 0.9]}
    rows = {
        "progressive": row([0.9, 0.9], tasks={"sentiment": [0.85, 0.85], "topic": [0.9, 0.9]}),
        "head-frozen:sentiment": row([0.85, 0.86], kind="head-frozen", task="sentiment", tasks=tasks,
                                     frozen_heads={"sentiment": [(0.78, 0.80), (0.80, 0.82)]}),
    }
    claim = find(check_claims(rows, reference="progressive"), "A frozen head")[0]
    assert claim.status == SUPPORTED
    assert "from 0.7900 [0.7800 to 0.8000] to 0.8100" in claim.measured
    assert "changed its final accuracy by -0.0400 against progressive" in claim.measured
    rows["head-frozen:sentiment"] = row([0.85, 0.86], kind="head-frozen", task="sentiment", tasks=tasks,
                                        frozen_heads={"sentiment": [(0.80, 0.80), (0.85, 0.80)]})
    assert find(check_claims(rows, reference="progressive"), "A frozen head")[0].status == NOT_SUPPORTED
    del rows["head-frozen:sentiment"]["per_seed"][0]["frozen_heads"]  # the loop recorded none
    assert find(check_claims(rows, reference="progressive"), "A frozen head")[0].status == NOT_MEASURED


def test_sharing_the_encoder_against_single_task_runs():
    rows = {
        "config": row([0.85], tasks={"sentiment": [0.80], "topic": [0.90]}),
        "single:sentiment": row([0.805], kind="single-task", task="sentiment", tasks={"sentiment": [0.805]}),
        "single:topic": row([0.95], kind="single-task", task="topic", tasks={"topic": [0.95]}),
    }
    claims = {c.claim.split()[4]: c for c in find(check_claims(rows, reference="config"), "Sharing one encoder")}
    assert claims["sentiment"].status == SUPPORTED  # 0.005 below alone: within the tolerance
    assert claims["topic"].status == NOT_SUPPORTED and "(94.7% of it)" in claims["topic"].measured
    without = find(check_claims(rows, reference=None), "Sharing one encoder")
    assert {c.status for c in without} == {NOT_MEASURED}
    assert not find(check_claims({"config": rows["config"]}, "config"), "Sharing one encoder")  # none ran alone


def test_anchoring_against_the_scenario_it_anchors():
    rows = {"full": row([0.90, 0.91], probes=sts(0.94, 0.95)),
            "full+distill": {**row([0.89, 0.90], probes=sts(0.98, 0.99)), "base": "full"},
            "full+l2sp": {**row([0.90, 0.91], probes=sts(0.93, 0.96)), "base": "full"}}
    claims = {c.measured.split(" ")[0]: c for c in find(check_claims(rows), "Anchoring keeps more")}
    distill = claims["full+distill"]
    assert distill.status == SUPPORTED and "kept 98.5% [98.0% to 99.0%]" in distill.measured
    assert claims["full+l2sp"].status == NOT_SUPPORTED  # the seed ranges overlap
    lone = find(check_claims({"full+distill": rows["full+distill"]}), "Anchoring keeps more")
    assert [c.status for c in lone] == [NOT_MEASURED]


def test_the_price_of_keeping_99_percent():
    rows = {"full": row([0.900, 0.910], probes=sts(0.94, 0.95)),
            "full+distill": {**row([0.898, 0.902], probes=sts(0.991, 0.995)), "base": "full"}}
    price = find(check_claims(rows), "Keeping 99%")
    assert len(price) == 1 and price[0].status == NOT_SUPPORTED and "a price of 0.50 points" in price[0].measured
    rows["full+distill"] = {**row([0.9035, 0.9045], probes=sts(0.991, 0.995)), "base": "full"}
    kept = find(check_claims(rows), "Keeping 99%")[0]
    assert kept.status == SUPPORTED and "a price of 0.10 points" in kept.measured
    rows["full+distill"] = {**row([0.91, 0.92], probes=sts(0.98, 0.995)), "base": "full"}  # one seed below 99%
    missed = find(check_claims(rows), "Keeping 99%")[0]
    assert missed.status == NOT_SUPPORTED and "no scenario kept 99% in every seed" in missed.measured
    assert not find(check_claims({"full": rows["full"]}), "Keeping 99%")  # nothing tried to keep anything
