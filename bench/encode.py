"""CPU encode throughput: thawing's `Encoder.encode` beside `SentenceTransformer.encode`, same model, same
sentences, same batch size, alternating runs in one process; also the max abs difference.

Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/encode.py --n 1000 --repeats 5 --output bench/results/encode.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from report import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--data", default=str(REPO.parent / "shared/datasets/trec/train.jsonl"))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from thawing.model.loading import load_encoder
    from thawing.model.resolve import resolve_model

    with open(args.data) as lines:
        texts = [json.loads(line)["text"] for line in lines][: args.n]
    ours = load_encoder(args.model)
    theirs = SentenceTransformer(str(resolve_model(args.model)), device="cpu")
    runs = {"thawing": [], "sentence_transformers": []}
    ours.encode(texts[:64]), theirs.encode(texts[:64])  # warm-up
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both sides alike
        start = time.perf_counter()
        a = ours.encode(texts, batch_size=args.batch_size)
        runs["thawing"].append(time.perf_counter() - start)
        start = time.perf_counter()
        b = theirs.encode(texts, batch_size=args.batch_size)
        runs["sentence_transformers"].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "model": args.model,
        "n": len(texts),
        "batch_size": args.batch_size,
        "seconds": runs,
        "sentences_per_s": {k: round(len(texts) / v, 1) for k, v in medians.items()},
        "speed_ratio_thawing_over_st": round(medians["sentence_transformers"] / medians["thawing"], 3),
        "max_abs_diff": float(np.abs(a - b).max()),
        "shape": list(a.shape),
    }
    print(json.dumps(result, indent=2))
    write_report(result, args.output)


if __name__ == "__main__":
    main()
