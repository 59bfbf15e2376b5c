"""`thawing tune` on a mix of the quality benchmark (issue #27, item 2): the tune's own wall time and pruned trials,
then the chosen plan against the `full` and `progressive` presets on the test split, with stage time, at each seed.

The data are bench/quality.py's fixed splits (`make_splits`, seed 0), capped at --train-rows and --dev-rows per data
set (test: whole). The tune searches the default space (`tune.space` defaults) on dev with median pruning, starting
from the `full` and `progressive` presets (trials 0 and 1); the chosen trial (the best on dev, or with --tolerance
the fastest near it) is scored on test once, by the tune. The presets then train on the same files, seed and
settings.

Run: HF_HUB_OFFLINE=1 PYTHONPATH=src nice -n 5 .venv/bin/python bench/tune.py --mix trec_fine+ag_news
         --trials 30 --quality-sizes --seeds 0 1 2 --output bench/results/tune_trec_fine_ag_news.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from quality import FULL, MODEL, SOURCES, STSB, make_splits, thawing_task  # noqa: E402


def base_config(mix: list[str], paths: dict[str, dict[str, Path]], seed: int, probe: bool) -> dict:
    config = {"name": "tune-bench", "model": {"name": MODEL, "max_length": 128},
              "tasks": {name: thawing_task(name, paths[name]) for name in mix},
              "train": {"batch_size": 32, "seed": seed, "checkpoint": False}}
    if probe and STSB.is_file():
        config["probes"] = {"stsb": {"type": "similarity", "data": str(STSB), "limit": 500}}
    return config


def plan_run(config: dict, schedule: str | list, work: Path) -> dict:
    """One plan (a preset's name, or a stage list) trained on the same data: test score (None where a task has no
    test split), dev score, stage time, retention."""
    from thawing.config import parse_config
    from thawing.training.loop import train

    run = train(parse_config({**config, "schedule": schedule}), run_dir=str(work))
    results, stages = run.read_json(run.results), run.read_json(run.stages)
    tested = all(split == "test" for split in results["splits"].values())
    return {"test_score": results["score"] if tested else None, "test": results["tasks"] if tested else None,
            "dev_score": max(s["best_score"] for s in stages),
            "stage_s": round(sum(s["wall_s"] for s in stages), 2),
            "stsb_retention": ((results.get("probes") or {}).get("stsb") or {}).get("spearman_retention"),
            "stages": [{k: s.get(k) for k in ("stage", "epochs_run", "updates", "stopped", "best_score", "wall_s")}
                       for s in stages]}


def write_report(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mix", default="trec_coarse+sst2+conll", choices=sorted(FULL["mixes"]))
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--startup-trials", type=int, default=3)
    parser.add_argument("--train-rows", type=int, default=300)
    parser.add_argument("--dev-rows", type=int, default=100)
    parser.add_argument("--quality-sizes", action="store_true",
                        help="quality.py's sizes (1,000 train, AG News and CoNLL 600; 300 dev) over --*-rows")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="the tune at the first; the chosen plan and the presets trained at each")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="tune.tolerance: choose the fastest trial within this of the best dev score")
    parser.add_argument("--probe", action="store_true", help="the STS-B retention probe in every run (slower)")
    parser.add_argument("--work", default="/tmp/thawing-tune-bench")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    import torch

    from thawing.config import parse_config
    from thawing.study.tune import run_tune

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    mix = FULL["mixes"][args.mix]
    mode = ({"train": FULL["train"], "dev": FULL["dev"], "test": {}} if args.quality_sizes else
            {"train": dict.fromkeys(SOURCES, args.train_rows), "dev": dict.fromkeys(SOURCES, args.dev_rows),
             "test": {}})
    paths = {name: make_splits(name, mode, work) for name in mix}
    config = base_config(mix, paths, args.seeds[0], args.probe)
    started = time.perf_counter()
    tune = run_tune(parse_config({**config, "tune": {"trials": args.trials, "startup_trials": args.startup_trials,
                                                      "tolerance": args.tolerance}}),
                    work / "tune")
    tune_s = round(time.perf_counter() - started, 1)
    summary = tune.read_json(tune.tune_json)
    best = next(r for r in summary["trials"] if r["number"] == summary["best"])
    report = {
        "command": " ".join(["bench/tune.py"] + (argv if argv is not None else sys.argv[1:])),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "mix": args.mix, "seeds": args.seeds, "probe": args.probe, "complete": False,
        "rows": {"train": mode["train"], "dev": mode["dev"], "test": "all"},
        "tune": {"wall_s": tune_s, "trials": len(summary["trials"]), "states": summary["states"],
                 "trials_stage_s": round(sum(r["stage_s"] or 0.0 for r in summary["trials"]), 1)},
        "tolerance": args.tolerance,
        "best_dev": max((r for r in summary["trials"] if r["state"] == "complete"),
                        key=lambda r: r["values"]["score"])["number"],
        "chosen": {"trial": best["number"], "start": best.get("start"), "params": best["params"], "plan": best["plan"],
                   "dev_score": best["values"]["score"], "test_score": best["test"]["score"],
                   "test": best["test"]["tasks"], "stage_s": best["stage_s"]},
        "seeds_runs": {},
        "trials": [{k: r[k] for k in ("number", "state", "start", "params", "values", "stage_s", "wall_s")}
                   for r in summary["trials"]],
    }
    output = Path(args.output)
    write_report(output, report)  # the tune's result kept before hours of seed runs
    # the chosen plan and the presets at each seed, one after another (their stage times at one load), the JSON
    # rewritten after each run so that a run stopped part way keeps what finished
    plans: dict[str, str | list] = {"chosen": best["plan"], "full": "full", "progressive": "progressive"}
    runs: dict[str, dict[str, dict]] = report["seeds_runs"]
    for seed in args.seeds:
        for name, plan in plans.items():
            runs.setdefault(name, {})[str(seed)] = plan_run({**config, "train": {**config["train"], "seed": seed}},
                                                            plan, work / f"{name}-{seed}")
            write_report(output, report)
    report["presets"] = {p: runs[p][str(args.seeds[0])] for p in ("full", "progressive")}
    report["means"] = {name: {k: round(sum(r[k] for r in by_seed.values()) / len(by_seed), 4)
                              for k in ("test_score", "stage_s")} for name, by_seed in runs.items()}
    full, means = report["presets"]["full"], report["means"]
    report["verdict"] = {
        "chosen_minus_full_test": round(report["chosen"]["test_score"] - full["test_score"], 4),
        "chosen_stage_time_over_full": round(best["stage_s"] / full["stage_s"], 3) if full["stage_s"] else None,
        "seeds": {
            "chosen_minus_full_test": round(means["chosen"]["test_score"] - means["full"]["test_score"], 4),
            "chosen_stage_time_over_full": round(means["chosen"]["stage_s"] / means["full"]["stage_s"], 3),
        },
    }
    report["complete"] = True
    write_report(output, report)
    print(json.dumps({k: report[k] for k in ("tune", "chosen", "means", "verdict")}, indent=2))
    return report


if __name__ == "__main__":
    main()
