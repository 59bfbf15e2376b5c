"""The sentence-pair task types on STS-B (MiniLM, CPU): `similarity` alone, test Spearman of the pretrained encoder
(`frozen`: no gradient step) against the plans that train it (`full`, `progressive`; `heads` trains nothing of a
task without a head and is refused); `retrieval` on pairs built from STS-B (below), MRR@10 before and after; and
`pair-classification` on STS-B's scores binned into three classes (a stand-in for NLI, which ../shared lacks):
different (score < 2), related (2 to 4), equivalent (4 and above).

STS-B's train file is ordered by genre (its first 2,000 rows are all image captions; dev mixes captions, news and
forums), so a train subset (--n-train) is drawn at random (random.Random(seed)), kept in file order, never the first
rows. Retrieval pairs, deterministic and kept outside the project (--work): every row with score >= 4 is a query
(sentence1) and its positive (sentence2); its hard negative is the sentence2 of the next row of the split with a
score below 2, so the split's low-score sentences join its corpus.

Run: HF_HUB_OFFLINE=1 nice -n 5 .venv/bin/python bench/pairs.py --seed 0 \
         --output bench/results/pairs_stsb_all_seed0.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from report import write_report  # noqa: E402

DATA = REPO.parent / "shared" / "datasets" / "stsb"
SPLITS = ("train", "dev", "test")
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def read(split: str, n_train: int | None, seed: int) -> list[dict]:
    """A split's rows; train: `n_train` of them drawn at random (file order kept), or all."""
    rows = [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines()]
    if split != "train" or not n_train or n_train >= len(rows):
        return rows
    keep = set(random.Random(seed).sample(range(len(rows)), n_train))
    return [row for i, row in enumerate(rows) if i in keep]


def similarity_splits(work: Path, n_train: int | None, seed: int) -> dict[str, str]:
    """STS-B's splits (train sampled as `read` says), written under `work`; returns split -> path."""
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in SPLITS:
        path = work / f"stsb_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in read(split, n_train, seed)))
        out[split] = str(path)
    return out


def retrieval_pairs(work: Path, n_train: int | None, seed: int) -> dict[str, str]:
    """Write the STS-B-derived retrieval splits under `work` (from train's sample); returns split -> path."""
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in SPLITS:
        rows = read(split, n_train, seed)
        low = [i for i, r in enumerate(rows) if r["score"] < 2]
        pairs = []
        for i, row in enumerate(rows):
            if row["score"] >= 4:
                negative = rows[next((j for j in low if j > i), low[0])]["sentence2"]
                pairs.append({"query": row["sentence1"], "positive": row["sentence2"], "negative": negative})
        path = work / f"stsb_retrieval_{split}.jsonl"
        path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
        out[split] = str(path)
    return out


BINS = ((2.0, "different"), (4.0, "related"), (float("inf"), "equivalent"))


def binned_pairs(work: Path, n_train: int | None, seed: int) -> dict[str, str]:
    """STS-B's splits (train sampled as `read` says) with each score's class (BINS) as the label; split -> path."""
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in SPLITS:
        rows = [{"sentence1": r["sentence1"], "sentence2": r["sentence2"],
                 "label": next(name for bound, name in BINS if r["score"] < bound)} for r in read(split, n_train, seed)]
        path = work / f"stsb_classes_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[split] = str(path)
    return out


def config(kind: str, schedule: str, data: dict, epochs: float | None, seed: int) -> dict:
    task = {"type": kind, "data": data}
    if kind == "similarity":
        task["score_range"] = [0, 5]
    train = {"batch_size": 32, "seed": seed, **({"epochs": epochs} if epochs else {})}
    return {"name": f"pairs-{kind}", "model": {"name": MODEL, "max_length": 64},
            "tasks": {"stsb": task}, "train": train, "schedule": schedule}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=None, help="N train rows drawn at random (default: all)")
    parser.add_argument("--epochs", type=float, default=None, help="every trained stage's epochs (default: preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plans", default="frozen,full")
    parser.add_argument("--kinds", default="similarity,retrieval")  # and pair-classification
    parser.add_argument("--work", default="/tmp/thawing-bench-pairs")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    import torch

    from thawing.config import parse_config
    from thawing.training.loop import train

    sources = {"similarity": similarity_splits(Path(args.work) / "data", args.n_train, args.seed),
               "retrieval": retrieval_pairs(Path(args.work) / "data", args.n_train, args.seed),
               "pair-classification": binned_pairs(Path(args.work) / "data", args.n_train, args.seed)}
    results: dict = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for kind in args.kinds.split(","):
        for plan in args.plans.split(","):
            start = time.perf_counter()
            run = train(parse_config(config(kind, plan, sources[kind], args.epochs, args.seed)),
                        run_dir=f"{args.work}/{stamp}-{kind}-{plan}")
            stages = run.read_json(run.stages)
            results.setdefault(kind, {})[plan] = {
                "test": run.read_json(run.results)["tasks"]["stsb"],
                "wall_s": round(time.perf_counter() - start, 1),
                "stages": [{k: s.get(k) for k in ("stage", "epochs_run", "updates", "best_score", "stopped")}
                           for s in stages],
                "run_dir": str(run.path),
            }
            print(kind, plan, json.dumps(results[kind][plan]["test"]), results[kind][plan]["wall_s"], flush=True)
    report = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "data": {"train_rows": args.n_train or "all (5,749)", "sample": "random.Random(seed), file order",
                 "epochs": args.epochs or "preset's", "seed": args.seed,
                 "retrieval_rows": {s: len(Path(p).read_text().splitlines()) for s, p in sources["retrieval"].items()}},
        "results": results,
    }
    write_report(report, args.output)


if __name__ == "__main__":
    main()
