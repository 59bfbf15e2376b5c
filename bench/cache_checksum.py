"""What the feature cache's per-entry checksums cost: the frozen encoder's features for TREC (pooled) and CoNLL
(per token) computed once, then the checksum of the written entries and a verified read, each against the compute.

Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/cache_checksum.py --rows 2000 --output bench/results/cache_checksum.json
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

DATA = Path(os.environ.get("THAWING_DATASETS", REPO.parent / "shared" / "datasets"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--rows", type=int, default=2000, help="train rows per task (dev: a quarter)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    import torch

    from thawing.config import parse_config
    from thawing.model.runtime import resolve_for_training
    from thawing.store.cache import FeatureStore, file_digest
    from thawing.training.features import cached_features
    from thawing.training.setup import prepare

    work = Path(tempfile.mkdtemp(prefix="cache-checksum-"))
    trec, conll = DATA / "trec" / "train.jsonl", DATA / "conll2003" / "train.jsonl"
    dev = args.rows // 4
    config = parse_config({
        "model": {"name": args.model, "max_length": 128},
        "tasks": {
            "trec": {"type": "classification", "label_field": "label_coarse", "data": {"train": str(trec)},
                     "dev_fraction": 0.2, "limit": {"train": args.rows + dev}},
            "conll": {"type": "token-classification", "data": {"train": str(conll), "dev": str(conll)},
                      "limit": {"train": args.rows, "dev": dev}},
        },
        "freeze": ["encoder"],
        "cache": {"dir": str(work / "store")},
    })
    prep = prepare(config)
    runtime = resolve_for_training(config, prep)
    quiet = lambda _message: None  # noqa: E731

    start = time.perf_counter()
    cached_features(prep.model, prep.features, runtime, config.cache.dir, 32, quiet)
    cold = time.perf_counter() - start  # encode + write (with the checksum taken at write)
    files = sorted((work / "store").glob("*/*/*.npy"))
    start = time.perf_counter()
    for path in files:
        file_digest(path)
    checksum = time.perf_counter() - start
    start = time.perf_counter()
    cached_features(prep.model, prep.features, runtime, config.cache.dir, 32, quiet)
    warm = time.perf_counter() - start  # fingerprint + verified read
    store = FeatureStore(work / "store")
    report = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "model": args.model, "rows": args.rows,
        "entry_mb": round(sum(p.stat().st_size for p in files) / 1e6, 1),
        "seconds": {"compute_and_write": round(cold, 3), "checksum_all_entries": round(checksum, 4),
                    "warm_read_verified": round(warm, 3)},
        "checksum_share_of_compute": round(checksum / (cold - checksum), 4),
        "entries": len(list(store.root.glob("*/*"))),
    }
    print(report)
    write_report(report, args.output)


if __name__ == "__main__":
    main()
