"""What anchoring and interpolation keep: task score against retention for full fine-tuning and progressive, each
plain, with embedding distillation and with L2-SP, and the WiSE-FT interpolation curve of the full run; and, as the
other way to keep embeddings, an STS-B `similarity` task in the mix (`+similarity`, with or without distillation).

Data: configs/study_retention.yaml (TREC coarse + SST-2, STS-B/SUBJ/drift probes), with `--n` training rows per task;
`+similarity` adds STS-B's train pairs (`--n` of them drawn at random, as bench/pairs.py draws them) with its dev and
test splits. The STS-B probe reads the first 500 test pairs: held out from the similarity task's training too. The
test score of every variant is the mean of TREC and SST-2 (a similarity task's Spearman is reported on its own).
Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/retain.py --n 1000 --seeds 0 --output bench/results/retain_cpu.json \
         --plot docs/images/retain_tradeoff.png
The plot: mean test score against mean STS-B retention per variant (bars: the seeds' range), and the interpolation
curve of the full run (mean over seeds, one point per alpha).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402

FULL = {"name": "full", "train": ["all"], "epochs": 2, "lr": {"encoder": 3e-5}}
ANCHORS = {"distill": {"distill": {"weight": 1.0, "loss": "cosine"}}, "l2sp": {"l2sp": {"weight": 0.1}}}
VARIANTS = [f"{plan}{extra}" for plan in ("full", "progressive")
            for extra in ("", "+distill", "+l2sp", "+similarity", "+similarity+distill")]
CLASSIFICATION = ("question_type", "sentiment")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default=",".join(v for v in VARIANTS if "similarity" not in v))
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--output", default=None)
    parser.add_argument("--plot", default=None, help="PNG of task score against STS-B retention")
    parser.add_argument("--table", default=None, help="print the markdown table of this JSON report, and stop")
    args = parser.parse_args()
    if args.table:
        import json

        rows = json.loads(Path(args.table).read_text())["rows"]
        print(table(rows))
        if args.plot:
            plot(rows, args.plot)
        return

    import torch
    from pairs import similarity_splits

    from thawing.config import RetainConfig, StageConfig, TaskConfig, load_config
    from thawing.study.interpolate import interpolate
    from thawing.training.loop import train

    root = Path(tempfile.mkdtemp(prefix="thawing-retain-"))
    limits = [f"tasks.question_type.limit={{train: {args.n}}}", f"tasks.sentiment.limit={{train: {args.n}}}"]
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    report = {"command": " ".join(sys.argv), "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, "
              f"torch {torch.__version__}", "n": args.n, "rows": []}
    rows = report["rows"]
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.variants.split(","):
            plan, *extras = name.split("+")
            config = load_config(REPO / "configs" / "study_retention.yaml", limits + [f"train.seed={seed}"])
            schedule = "progressive" if plan == "progressive" else [StageConfig.model_validate(FULL)]
            config = config.model_copy(update={"schedule": schedule})
            anchors = [ANCHORS[e] for e in extras if e in ANCHORS]
            if anchors:
                config = config.model_copy(update={"retain": RetainConfig.model_validate(anchors[0])})
            if "similarity" in extras:
                data = similarity_splits(root / f"stsb-seed{seed}", args.n, seed)
                stsb = TaskConfig.model_validate({"type": "similarity", "data": data, "score_range": [0, 5]})
                config = config.model_copy(update={"tasks": {**config.tasks, "stsb": stsb}})
            began = time.perf_counter()
            run = train(config, run_dir=str(root / f"{name}-seed{seed}"))
            results = run.read_json(run.results)
            tasks = {t: results["tasks"][t]["accuracy"] for t in CLASSIFICATION}
            row = {"variant": name, "seed": seed, "wall_s": round(time.perf_counter() - began, 1),
                   "score": sum(tasks.values()) / len(tasks), "tasks": tasks, "probes": results.get("probes", {})}
            if "stsb" in results["tasks"]:
                row["similarity_test"] = results["tasks"]["stsb"]
            if name == "full":
                curve = interpolate(run.path, [float(a) for a in args.alphas.split(",")], save=False)
                row["interpolation"] = [{k: p[k] for k in ("alpha", "dev_score", "score", "retention")}
                                        | {"stsb": p["probes"]["stsb"]["spearman_retention"]} for p in curve["points"]]
            rows.append(row)
            print(row, flush=True)
            write_report(report, args.output)  # after every run: a long run cut short keeps what it measured
    print(table(rows))
    if args.plot:
        plot(rows, args.plot)


def table(rows: list[dict]) -> str:
    """Per variant and per interpolation alpha: the mean over seeds (min-max) of each figure."""
    from statistics import mean

    def cell(values: list[float], digits: int = 3, percent: bool = False) -> str:
        f = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.{digits}f}")
        return f(mean(values)) + (f" ({f(min(values))}-{f(max(values))})" if len(values) > 1 else "")

    lines = ["| variant | TREC | SST-2 | test score | STS-B retention | STS-B task (test Spearman) | SUBJ | drift "
             "| wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["variant"] for r in rows):
        runs = [r for r in rows if r["variant"] == name]
        similarity = cell([r["similarity_test"]["spearman"] for r in runs]) if "similarity_test" in runs[0] else ""
        lines.append(f"| {name} | {cell([r['tasks']['question_type'] for r in runs])} | "
                     f"{cell([r['tasks']['sentiment'] for r in runs])} | {cell([r['score'] for r in runs])} | "
                     f"{cell([r['probes']['stsb']['spearman_retention'] for r in runs], percent=True)} | "
                     f"{similarity} | "
                     f"{cell([r['probes']['subj']['accuracy'] for r in runs])} | "
                     f"{cell([r['probes']['drift']['drift'] for r in runs])} | "
                     f"{cell([r['wall_s'] for r in runs], digits=0)} |")
    curves = [r["interpolation"] for r in rows if "interpolation" in r]
    for i, point in enumerate(curves[0] if curves else []):
        at = [c[i] for c in curves]
        lines.append(f"| full, interpolated at alpha {point['alpha']:g} | | | {cell([p['score'] for p in at])} | "
                     f"{cell([p['stsb'] for p in at], percent=True)} | | | | |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """Task score against STS-B retention: one point per variant (mean over seeds, the range as bars), and the
    interpolation curve (mean over seeds per alpha)."""
    import matplotlib

    matplotlib.use("Agg")
    from statistics import mean

    import matplotlib.pyplot as plt

    from thawing.store.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 5))
    for name in dict.fromkeys(r["variant"] for r in rows):
        runs = [r for r in rows if r["variant"] == name]
        xs = [r["probes"]["stsb"]["spearman_retention"] for r in runs]
        ys = [r["score"] for r in runs]
        x, y = mean(xs), mean(ys)
        ax.errorbar([x], [y], xerr=[[x - min(xs)], [max(xs) - x]], yerr=[[y - min(ys)], [max(ys) - y]],
                    fmt="o", capsize=3, label=name)
    curves = [r["interpolation"] for r in rows if "interpolation" in r]
    if curves:
        alphas = [p["alpha"] for p in curves[0]]
        xs = [mean(c[i]["stsb"] for c in curves) for i in range(len(alphas))]
        ys = [mean(c[i]["score"] for c in curves) for i in range(len(alphas))]
        ax.plot(xs, ys, "k--", marker=".", label="full, interpolated (alpha)")
        for a, x, y in zip(alphas, xs, ys, strict=True):
            ax.annotate(f"{a:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.axvline(0.99, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("STS-B Spearman retention (fraction of the pretrained encoder's)")
    ax.set_ylabel("test score (mean accuracy, TREC coarse + SST-2)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
