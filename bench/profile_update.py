"""Where an update waits for the device: syncs per update (tests/syncs.py's counter), time per update and the top
operations (torch.profiler) of `thawing train` on the toy tasks, with the non-finite guard's gradient clipping and
without. Run it once on the code before a change and once after, with the same `--label`-less output file: each run
adds its entry (`--label`), so the file holds both.

Run (from the repository root; PYTHONPATH picks the source tree profiled):
    PYTHONPATH=src HF_HUB_OFFLINE=1 .venv/bin/python bench/profile_update.py --label after \
        --output bench/results/profile_update.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402
from conftest import save_qwen2  # noqa: E402
from report import write_report  # noqa: E402
from syncs import syncs_per_update  # noqa: E402
from toy import toy_config  # noqa: E402

import thawing  # noqa: E402
from thawing.config import parse_config  # noqa: E402
from thawing.training import loop  # noqa: E402
from thawing.training.events import Evaluated, StageStarted, UpdateDone  # noqa: E402

WAITS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::item")


def config(model: str, root: Path, clip: float | None, packing: bool, log_every: int):
    schedule = [{"name": "all", "train": ["all"], "epochs": 4, "eval_every": "epoch"}]
    return parse_config(toy_config(model, root, tasks=("sentiment", "ner"), schedule=schedule,
                                   train={"batch_size": 4, "seed": 0, "log_every": log_every, "grad_accum": 2,
                                          "checkpoint": False, "packing": packing, "grad_clip": clip}))


def seconds_per_update(cfg, root: Path) -> float:
    """The median wall time of the updates that neither log nor follow an evaluation or a stage start."""
    marks: list[tuple[type, int | None, float]] = []
    loop.train(cfg, run_dir=str(root / "timed"),
               callbacks=[lambda e: marks.append((type(e), getattr(e, "update", None), time.perf_counter()))])
    times, previous, skip = [], None, True
    for kind, update, now in marks:
        if kind is UpdateDone:
            if not skip and previous is not None and update % cfg.train.log_every:
                times.append(now - previous)
            previous, skip = now, False
        elif kind in (StageStarted, Evaluated):
            skip = True
    return statistics.median(times)


def profiled(cfg, root: Path, updates: int) -> dict:
    """torch.profiler over the whole run: the top operations by their own CPU time, and the waits per update."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loop.train(cfg, run_dir=str(root / "profiled"))
    table = prof.key_averages()
    top = sorted(table, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    waits = {e.key: e.count for e in table if e.key in WAITS}
    return {"top_ops": [{"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 1)}
                        for e in top],
            "waiting_ops_per_update_whole_run": {k: round(v / updates, 1) for k, v in waits.items()}}


def measure(name: str, model: str, clip: float | None, packing: bool, log_every: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        counts, sites, run = syncs_per_update(config(model, root / "c", clip, packing, log_every), root / "c")
        updates = run.read_json(run.stages)[0]["updates"]
        per = seconds_per_update(config(model, root / "t", clip, packing, log_every), root / "t")
        prof = profiled(config(model, root / "p", clip, packing, log_every), root / "p", updates)
    kinds: dict[str, int] = {}
    for site in (s for window in sites for s in window):
        kinds[site] = kinds.get(site, 0) + 1
    return {"model": name, "grad_clip": clip, "packing": packing, "updates": updates,
            "plain_updates": len(counts), "syncs_per_plain_update": {"mean": round(statistics.mean(counts), 2),
                                                                     "max": max(counts)},
            "sync_sites_per_plain_update": {k: round(v / len(counts), 2) for k, v in sorted(kinds.items())},
            "ms_per_plain_update": round(per * 1e3, 2), **prof}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="e.g. before / after")
    parser.add_argument("--minilm", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    qwen2 = save_qwen2(Path(tempfile.mkdtemp()), hidden=32, layers=3, heads=4, kv_heads=2, intermediate=64, dense=24)
    cases = []
    for name, model, packing in (("tiny-qwen2", str(qwen2), True), ("all-MiniLM-L6-v2", args.minilm, False)):
        for clip in (1.0, None):
            cases.append(measure(name, model, clip, packing, args.log_every))
            print(json.dumps(cases[-1]))
    entry = {"command": " ".join(sys.argv), "source": str(Path(thawing.__file__).parents[1]),
             "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__}, "
                        f"{args.threads} thread(s)", "cases": cases}
    report = json.loads(Path(args.output).read_text()) if args.output and Path(args.output).is_file() else {}
    report[args.label] = entry
    write_report(report, args.output)


if __name__ == "__main__":
    main()
