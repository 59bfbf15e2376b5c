"""Fair baselines (issue #28): each baseline's settings chosen on dev, as thawing's plans are, then scored once on
test. The data are bench/quality.py's splits (the same files, the same sizes), so the chosen cells compare with its
tables.

    hf      the Hugging Face Trainer (full fine-tuning, a new head), a grid of learning rate x epochs, each cell keeping
            its best epoch on dev (load_best_model_at_end); the cell with the best dev score is the baseline
    hf_head the same with the new head at a rate of its own (`--head-lr`, the common practice; sentence tasks)
    probe   logistic regression on frozen MiniLM embeddings, C chosen on dev (scikit-learn's default C=1 underfits
            many classes)

Every cell is recorded (dev, test, updates, wall time), so the table can show the chosen one and how far the others
are from it. The JSON is written after every cell: a long run can be stopped and its cells read.

Run: HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python bench/baselines.py --datasets trec_fine --seeds 0
         --output bench/results/baselines.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (the quality benchmark's data and runners)
from report import write_report  # noqa: E402


def hf_grid(name: str, paths: dict, seed: int, work: Path, lrs: list[float], epochs: list[int], save,
            head_lr: float | None = None, done: list[dict] | None = None) -> dict:
    """The Trainer's grid; `done`: cells an earlier run of the same report measured (kept, not run again)."""
    token = quality.SOURCES[name][2] == "token"
    cells = list(done or [])
    for lr in lrs:
        for n in epochs:
            if any(c["lr"] == lr and c["epochs"] == n and c.get("head_lr") == head_lr for c in cells):
                continue
            began = time.perf_counter()
            cell = work / f"hf-{lr}-{n}-{head_lr}"
            got = (quality.run_hf_token(paths, seed, cell, n, lr=lr) if token
                   else quality.run_hf(paths, seed, cell, n, lr=lr, head_lr=head_lr))
            cells.append({"lr": lr, "head_lr": head_lr, "epochs": n, **got,
                          "wall_s": round(time.perf_counter() - began, 1)})
            save(cells)
    return {"chosen": max(cells, key=lambda c: c["dev"]), "cells": cells}


def probe_grid(paths: dict, seed: int, cs: list[float], save) -> dict:
    cells = []
    for c in cs:
        cells.append({"C": c, **quality.run_probe(paths, seed, C=c)})
        save(cells)
    return {"chosen": max(cells, key=lambda c: c["dev"]), "cells": cells}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["trec_fine"], choices=list(quality.SOURCES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", default=["probe", "hf"], choices=["probe", "hf", "hf_head"])
    parser.add_argument("--head-lr", type=float, default=1e-3, help="hf_head: the classifier's rate")
    parser.add_argument("--lrs", nargs="+", type=float, default=[2e-5, 5e-5, 1e-4])
    parser.add_argument("--epochs", nargs="+", type=int, default=[3, 10])
    parser.add_argument("--cs", nargs="+", type=float, default=[0.01, 0.1, 1.0, 10.0, 100.0])
    parser.add_argument("--work", default=None)
    parser.add_argument("--output", default=None)
    parser.add_argument("--resume", action="store_true", help="keep the cells --output holds, run only the others")
    parser.add_argument("--train-rows", type=int, default=None, metavar="N",
                        help="cap every data set's train split at N rows instead of quality.py's (0: all rows)")
    parser.add_argument("--dev-rows", type=int, default=None, metavar="N", help="the same for dev (0: all rows)")
    args = parser.parse_args()

    mode = dict(quality.FULL)
    for split, rows in (("train", args.train_rows), ("dev", args.dev_rows)):
        if rows is not None:  # as bench/quality.py's options: one cap for every data set; 0: none
            mode[split] = dict.fromkeys(quality.SOURCES, rows or None)

    work = Path(args.work or tempfile.mkdtemp(prefix="thawing-baselines-"))
    report: dict = {"command": " ".join(sys.argv),
                    "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch threads "
                               f"{os.environ.get('OMP_NUM_THREADS', 'default')}",
                    "sizes": {s: mode[s] for s in ("train", "dev")}, "results": {}}
    if args.resume and args.output and Path(args.output).is_file():
        earlier = json.loads(Path(args.output).read_text())
        report["results"], report["command"] = earlier["results"], f"{earlier['command']}; then {report['command']}"

    def record(out: dict, method: str, cells: list[dict]) -> None:  # after every cell: a stopped run keeps its cells
        out[method] = {"cells": cells}
        write_report(report, args.output)

    for name in args.datasets:
        paths = quality.make_splits(name, mode, work)
        report.setdefault("rows", {})[name] = {s: len(path.read_text(encoding="utf-8").splitlines())
                                               for s, path in paths.items()}
        for seed in args.seeds:
            out = report["results"].setdefault(name, {}).setdefault(str(seed), {})
            if "probe" in args.methods and quality.SOURCES[name][2] != "token":
                out["probe"] = probe_grid(paths, seed, args.cs, functools.partial(record, out, "probe"))
            if "hf" in args.methods:
                out["hf"] = hf_grid(name, paths, seed, work / name / str(seed), args.lrs, args.epochs,
                                    functools.partial(record, out, "hf"), done=out.get("hf", {}).get("cells"))
            if "hf_head" in args.methods and quality.SOURCES[name][2] != "token":
                out["hf_head"] = hf_grid(name, paths, seed, work / name / str(seed), args.lrs, args.epochs,
                                         functools.partial(record, out, "hf_head"), head_lr=args.head_lr,
                                         done=out.get("hf_head", {}).get("cells"))
            print(json.dumps({name: {m: r["chosen"] for m, r in out.items()}}), flush=True)
    write_report(report, args.output)


if __name__ == "__main__":
    main()
