"""Do token budgets, packing and torch.compile pay off on this machine? One full fine-tuning epoch and one
encode pass per setting (sentences per batch or a token budget; padded or packed rows), alternating in one run.

Settings are `name` strings: "batch_size=32", "max_tokens=1024", each optionally followed by ",packed" and
",compiled". A compiled setting runs once, last (its first epoch includes the compilation: its time counts).

Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/batching.py --output bench/results/batching_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from report import write_report  # noqa: E402
from throughput import base_config, first_texts, scenario, scenario_context, time_epoch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--settings",
        default="batch_size=32,max_tokens=1024,batch_size=32+packed,max_tokens=1024+packed",
        help="comma-separated; '+packed' / '+compiled' switch packing / torch.compile on",
    )
    parser.add_argument("--n-trec", type=int, default=1000)
    parser.add_argument("--n-sst", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    args.device, args.mixed_precision, args.cache_dtype = "cpu", "no", "float32"

    import torch

    raw = base_config(args)
    ctx, groups, layers = scenario_context(raw, run_dir=Path(tempfile.mkdtemp()) / "r")
    prep = ctx.prep
    stage = scenario(raw, groups, "full", layers)
    # Encode times run on the same number of texts from the same files (the first rows of each).
    texts = first_texts("trec/train.jsonl", args.n_trec) + first_texts("sst2/train.jsonl", args.n_sst)
    settings = args.settings.split(",")
    eager = [x for x in settings if "compiled" not in x]
    rounds = [eager] * args.repeats + [[x for x in settings if "compiled" in x]]
    train_s: dict[str, list] = {}
    encode_s: dict[str, list] = {}
    for names in rounds:  # alternate the settings, so warm-up and drift hit all of them; keep the fastest
        for name in names:
            apply_setting(ctx, name)
            row = time_epoch(ctx, stage, groups, False, "cpu")
            train_s.setdefault(name, []).append(row["epoch_s"])
            start = time.perf_counter()
            prep.model.encoder.encode(texts, batch_size=args.batch_size, max_tokens=ctx.prep.config.train.max_tokens)
            encode_s.setdefault(name, []).append(round(time.perf_counter() - start, 3))
            print(name, row["epoch_s"], row["updates"], encode_s[name][-1], flush=True)
            prep.model.encoder.compile_layers(False)  # eager again for the next setting
    train_s = {k: {"runs_s": v, "best_s": min(v)} for k, v in train_s.items()}
    encode_s = {k: {"runs_s": v, "best_s": min(v)} for k, v in encode_s.items()}
    report = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}",
        "examples": len(texts),
        "full_finetune_epoch": train_s,
        "encode_s": encode_s,
    }
    print(json.dumps(report, indent=2))
    write_report(report, args.output)


def apply_setting(ctx, name: str) -> None:
    """Set batching, packing and compilation from a setting's name, e.g. "max_tokens=1024+packed", and resolve the
    run's runtime again from them, as `thawing train` would."""
    from thawing.model.runtime import resolve_for_training

    first, *flags = name.split("+")
    key, value = first.split("=")
    train = ctx.prep.config.train
    train.max_tokens = int(value) if key == "max_tokens" else None
    train.batch_size = int(value) if key == "batch_size" else train.batch_size
    train.packing, train.compile = "packed" in flags, "compiled" in flags
    ctx.runtime = resolve_for_training(ctx.prep.config, ctx.prep)


if __name__ == "__main__":
    main()
