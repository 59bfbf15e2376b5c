"""The disk cache's weight fingerprint: thawing's (a thread per tensor, no copy to bytes) against the one stream
with a bytes copy per tensor it replaced, on random weights of a given size. Both run in this process, alternately.

Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/fingerprint.py --gb 1.5 --output bench/results/fingerprint.json
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from report import write_report  # noqa: E402

from thawing.store.cache import fingerprint  # noqa: E402


def one_stream(module: torch.nn.Module) -> str:
    """The previous fingerprint: every tensor copied to bytes and fed to one hash, in order."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.5, help="size of the random fp32 weights")
    parser.add_argument("--tensors", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    per = int(args.gb * 1e9 / 4 / args.tensors)
    module = torch.nn.Module()
    for i in range(args.tensors):
        module.register_buffer(f"w{i:03d}", torch.randn(per))
    times = {"one_stream": [], "threaded": []}
    for _ in range(args.repeats):
        for name, fn in (("one_stream", one_stream), ("threaded", fingerprint)):
            start = time.perf_counter()
            fn(module)
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    report = {"command": " ".join(sys.argv), "cpus": os.cpu_count(), "gb": args.gb, "tensors": args.tensors,
              "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
              "speedup": round(best["one_stream"] / best["threaded"], 2)}
    print(report)
    write_report(report, args.output)


if __name__ == "__main__":
    main()
