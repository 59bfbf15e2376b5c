"""What anchoring and interpolation keep: task score against retention for full fine-tuning and progressive, each
plain, with embedding distillation and with L2-SP, and the WiSE-FT interpolation curve of the full run.

Data: configs/study_retention.yaml (TREC coarse + SST-2, STS-B/SUBJ/drift probes), with `--n` training rows per task.
Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/retain.py --n 1000 --seeds 0 --output bench/results/retain_cpu.json
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
VARIANTS = {
    "full": None,
    "full+distill": {"distill": {"weight": 1.0, "loss": "cosine"}},
    "full+l2sp": {"l2sp": {"weight": 0.1}},
    "progressive": None,
    "progressive+distill": {"distill": {"weight": 1.0, "loss": "cosine"}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    from thawing.config import load_config
    from thawing.interpolate import interpolate
    from thawing.training.loop import train

    root = Path(tempfile.mkdtemp(prefix="thawing-retain-"))
    limits = [f"tasks.question_type.limit={{train: {args.n}}}", f"tasks.sentiment.limit={{train: {args.n}}}"]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.variants.split(","):
            retain = VARIANTS[name]
            config = load_config(REPO / "configs" / "study_retention.yaml", limits + [f"train.seed={seed}"])
            schedule = [dict(FULL)] if name.startswith("full") else "progressive"
            config = config.model_copy(update={"schedule": schedule if isinstance(schedule, str) else None})
            if not isinstance(schedule, str):
                from thawing.config import StageConfig

                config = config.model_copy(update={"schedule": [StageConfig.model_validate(s) for s in schedule]})
            if retain is not None:
                from thawing.config import RetainConfig

                config = config.model_copy(update={"retain": RetainConfig.model_validate(retain)})
            began = time.perf_counter()
            run = train(config, run_dir=str(root / f"{name}-seed{seed}"))
            results = run.read_json(run.results)
            row = {"variant": name, "seed": seed, "wall_s": round(time.perf_counter() - began, 1),
                   "score": results["score"], "tasks": {t: v["accuracy"] for t, v in results["tasks"].items()},
                   "probes": results.get("probes", {})}
            if name == "full":
                curve = interpolate(run.path, [float(a) for a in args.alphas.split(",")], save=False)
                row["interpolation"] = [{k: p[k] for k in ("alpha", "dev_score", "score", "retention")}
                                        | {"stsb": p["probes"]["stsb"]["spearman_retention"]} for p in curve["points"]]
            rows.append(row)
            print(row, flush=True)
    import torch

    report = {"command": " ".join(sys.argv), "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, "
              f"torch {torch.__version__} (shared with other jobs while it ran)", "n": args.n, "rows": rows}
    write_report(report, args.output)


if __name__ == "__main__":
    main()
