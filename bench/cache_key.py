"""The feature cache's key: what asking for the weight fingerprint costs the first time a process asks for a module
(the whole weights hashed: what every stage with a frozen encoder paid before issue 30) and each time after, while
no weight changed (kept per module: `thawing.store.cache.fingerprint`). MiniLM, and random weights of a given size.

Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/cache_key.py --gb 1.5 --output bench/results/cache_key.json
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from report import write_report  # noqa: E402

from thawing.model.loading import load_encoder  # noqa: E402
from thawing.store.cache import fingerprint  # noqa: E402


def timed(module: torch.nn.Module, repeats: int) -> dict:
    """Seconds of the first ask on fresh copies (nothing known: the whole weights hashed) and of later asks."""
    first, later = [], []
    for _ in range(repeats):
        fresh = copy.deepcopy(module)
        start = time.perf_counter()
        key = fingerprint(fresh)
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        again = fingerprint(fresh)
        later.append(time.perf_counter() - start)
        assert again == key
    mb = sum(t.numel() * t.element_size() for t in module.state_dict().values()) / 1e6
    return {"mb": round(mb, 1), "first_s": [round(x, 4) for x in first], "later_s": [round(x, 6) for x in later],
            "speedup": round(min(first) / max(min(later), 1e-9))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--gb", type=float, default=1.5, help="size of the random fp32 weights (0: none)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    report = {"command": " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "torch": torch.__version__,
              "models": {args.model: timed(load_encoder(args.model), args.repeats)}}
    if args.gb:
        module, tensors = torch.nn.Module(), 48
        for i in range(tensors):
            module.register_buffer(f"w{i:03d}", torch.randn(int(args.gb * 1e9 / 4 / tensors)))
        report["models"][f"random {args.gb} GB fp32"] = timed(module, args.repeats)
    print(report)
    write_report(report, args.output)


if __name__ == "__main__":
    main()
