"""Compare stage plans on real data: `heads`, `progressive`, and `full` with the same total epochs as
progressive. MiniLM on CPU; TREC coarse + TREC fine (same questions) + an SST-2 slice. Reports each task's
test metrics, the dev selection score, and wall times, as JSON.

Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/plans.py --output bench/results/plans.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from report import write_report  # noqa: E402

DATA = REPO.parent / "shared" / "datasets"


def base_config(n_trec: int, n_sst: int, seed: int) -> dict:
    trec = {"train": str(DATA / "trec/train.jsonl"), "test": str(DATA / "trec/test.jsonl")}
    sst = {
        "train": str(DATA / "sst2/train.jsonl"),
        "dev": str(DATA / "sst2/dev.jsonl"),
        "test": str(DATA / "sst2/test.jsonl"),
    }
    return {
        "name": "plans",
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "max_length": 64},
        "tasks": {
            "trec_coarse": {
                "type": "classification",
                "data": trec,
                "label_field": "label_coarse",
                "limit": {"train": n_trec},
            },
            "trec_fine": {
                "type": "classification",
                "data": trec,
                "label_field": "label_fine",
                "limit": {"train": n_trec},
            },
            "sst2": {"type": "classification", "data": sst, "limit": {"train": n_sst}},
        },
        "train": {"batch_size": 32, "seed": seed},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n-trec", type=int, default=2500
    )  # the first 2,471 rows hold every fine label of the test split
    parser.add_argument("--n-sst", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plans", default="heads,progressive,full")
    parser.add_argument("--full-lr-heads", type=float, default=None, help="override the full preset's heads LR")
    parser.add_argument(
        "--progressive-lr-heads", type=float, default=None, help="override the heads LR of progressive's later stages"
    )
    parser.add_argument("--progressive-epochs", default=None, help="override progressive's stage epochs, e.g. 2,2,4")
    parser.add_argument(
        "--progressive-lr-encoder",
        type=float,
        default=None,
        help="override the encoder LR of progressive's later stages",
    )
    parser.add_argument("--runs", default="/tmp/thawing-bench-plans")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    import torch

    from thawing.config import parse_config
    from thawing.model.groups import num_layers
    from thawing.model.loading import load_encoder
    from thawing.training.loop import train
    from thawing.training.stages import preset

    layers = num_layers(load_encoder("sentence-transformers/all-MiniLM-L6-v2").backbone)
    progressive_epochs = sum(s.epochs for s in preset("progressive", layers) if not s.optional)
    results = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in args.plans.split(","):
        config = base_config(args.n_trec, args.n_sst, args.seed)
        if name == "full":  # the same total epochs as progressive, all parameters from the start
            full = preset("full", layers)[0].model_dump()
            if args.full_lr_heads:
                full["lr"]["heads"] = args.full_lr_heads
            config["schedule"] = [{**full, "epochs": progressive_epochs}]
        elif name == "progressive" and (
            args.progressive_lr_heads or args.progressive_epochs or args.progressive_lr_encoder
        ):
            stages = [s.model_dump() for s in preset("progressive", layers) if not s.optional]
            for stage in stages[1:]:
                stage["lr"]["heads"] = args.progressive_lr_heads or stage["lr"]["heads"]
                stage["lr"]["encoder"] = args.progressive_lr_encoder or stage["lr"]["encoder"]
            # a shorter (or no) epochs list leaves the later stages' epochs as they are
            for stage, epochs in zip(stages, (args.progressive_epochs or "").split(","), strict=False):
                stage["epochs"] = float(epochs) if epochs else stage["epochs"]
            config["schedule"] = stages
        else:
            config["schedule"] = name
        start = time.perf_counter()
        run = train(parse_config(config), run_dir=f"{args.runs}/{stamp}-{name}")
        wall = time.perf_counter() - start
        stages = run.read_json(run.stages)
        results[name] = {
            "test": run.read_json(run.results),
            "best_dev_score": max(s["best_score"] for s in stages if s["best_score"] is not None),
            "wall_s": round(wall, 1),
            "stages": stages,
            "run_dir": str(run.path),
        }
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "stages"}), flush=True)
    report = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "data": {"trec_train": args.n_trec, "sst2_train": args.n_sst, "seed": args.seed},
        "progressive_total_epochs": progressive_epochs,
        "results": results,
    }
    write_report(report, args.output)


if __name__ == "__main__":
    main()
