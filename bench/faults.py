"""Fault injection: SIGKILL a real `thawing train` run at many points, resume each, compare with the uninterrupted run.

Points are drawn with a seed from these kinds, spread over the run:
- time: a random moment of the run (startup, caching, a stage, an evaluation, finishing);
- stage-checkpoint / stage-boundary-checkpoint: while a checkpoint folder is being written (its `.tmp` exists);
- swap: while a checkpoint's previous folder waits aside (`.old` exists: between the two renames);
- final: while final/ is being written; results: after final/ is in place, before results.json;
- cache: while an entry of the feature cache is being written (its `.KEY.*` folder exists).
A watcher polls the run directory and kills the whole process group the moment the point is reached. Each killed run
is resumed with `thawing train --resume` (a run killed before its directory had a config is started again), and
results.json, metrics.jsonl (less the training records' clock fields), the heads, the encoder weights and the label
files must equal the reference's byte for byte. The JSON report gives every point and how many resumed to
identical results.

Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/faults.py --points 20 --output bench/results/faults.json
(MiniLM on slices of TREC and SST-2; `--model DIR` for another local model, e.g. a tiny one in the tests)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402

DATA = Path(os.environ.get("THAWING_DATASETS", REPO.parent / "shared" / "datasets"))
COMPARED = ["results.json", "metrics.jsonl", "final/heads.safetensors", "final/encoder/model.safetensors",
            "final/labels.json", "final/tasks.json"]
KINDS = ["time", "stage-checkpoint", "stage-boundary-checkpoint", "swap", "final", "results", "cache"]


def config(model: str, n: int) -> dict:
    trec = {"train": str(DATA / "trec/train.jsonl"), "test": str(DATA / "trec/test.jsonl")}
    sst = {"train": str(DATA / "sst2/train.jsonl"), "dev": str(DATA / "sst2/dev.jsonl")}
    return {
        "name": "faults",
        "model": {"name": model, "max_length": 64},
        "tasks": {
            "trec": {"type": "classification", "data": trec, "label_field": "label_coarse", "limit": {"train": n}},
            "sst2": {"type": "classification", "data": sst, "limit": {"train": n, "dev": n // 2}},
        },
        "train": {"batch_size": 16, "seed": 0, "checkpoint_every": 3, "eval_every": 4},
        "schedule": [
            {"name": "heads", "train": ["heads"], "epochs": 1},
            {"name": "top", "train": ["heads", "layers[-2:]"], "epochs": 1},
            {"name": "all", "train": ["all"], "epochs": 1, "lr": {"encoder": 2e-5}},
        ],
    }


def reached(kind: str, run: Path, cache: Path, since: float, at: float) -> bool:
    """Whether the run has reached the point: a moment, or a file state the run (or its feature cache) goes through."""
    checkpoints = run / "checkpoints"
    if kind == "cache":
        return writing_cache(cache)
    if kind == "time":
        return time.monotonic() - since >= at
    if kind == "stage-checkpoint":
        return (checkpoints / ".step.tmp").exists()
    if kind == "stage-boundary-checkpoint":
        return (checkpoints / ".last.tmp").exists()
    if kind == "swap":
        return (checkpoints / ".step.old").exists() or (checkpoints / ".last.old").exists()
    if kind == "final":
        return (run / ".final.tmp").exists()
    return (run / "final").is_dir() and not (run / "results.json").exists()


def writing_cache(root: Path) -> bool:
    """Whether an entry of the cache under `root` (root/KEY[:2]/KEY) is being written: its temporary `.KEY.*`."""
    try:
        shards = [entry.path for entry in os.scandir(root) if entry.is_dir()]
        return any(name.startswith(".") for shard in shards for name in os.listdir(shard))
    except FileNotFoundError:  # not made yet, or a shard removed under us
        return False


def train(args: list[str], env: dict, kill: tuple[str, Path, float] | None = None) -> dict:
    """Run `thawing train ARGS` in its own process group; with `kill`, SIGKILL it at that point."""
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "thawing", "train", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = False
    while proc.poll() is None:
        if kill and reached(kill[0], kill[1], Path(env["THAWING_CACHE"]), began, kill[2]):
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.0005)
    _, err = proc.communicate()
    return {"rc": proc.returncode, "killed": killed, "seconds": round(time.monotonic() - began, 2),
            "stderr": err.strip().splitlines()[-1][:300] if err.strip() else ""}


def digest(run: Path) -> dict[str, str]:
    return {name: hashlib.sha256(content(run / name)).hexdigest() if (run / name).is_file() else "missing"
            for name in COMPARED}


def content(path: Path) -> bytes:
    """A file's bytes; metrics.jsonl without the clock's fields (training records' time and speed)."""
    if path.name != "metrics.jsonl":
        return path.read_bytes()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return json.dumps([{k: v for k, v in r.items() if k not in ("time", "examples_per_s")} for r in records]).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--examples", type=int, default=160, help="training rows per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS), help="the kinds of point to draw from, in turn")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="thawing-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "config.json"  # JSON is YAML
    cfg.write_text(json.dumps(config(args.model, args.examples)))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    # Each run has its own feature cache, built as the reference built its own (a kill may hit its writing too).
    reference = train([str(cfg), "--run-dir", str(work / "reference")], {**env, "THAWING_CACHE": str(work / "c")})
    if reference["rc"] != 0:
        sys.exit(f"the reference run failed: {reference['stderr']}")
    expected = digest(work / "reference")
    rng = random.Random(args.seed)
    chosen = args.kinds.split(",")
    kinds = [chosen[i % len(chosen)] for i in range(args.points)]  # every kind, then round again
    rows = []
    for i, kind in enumerate(kinds):
        run = work / f"run-{i}"
        env["THAWING_CACHE"] = str(work / f"c{i}")
        at = round(rng.uniform(0, 0.8 * reference["seconds"]), 2)  # runs vary in length: most such points land
        # a window this short can pass between two polls: try again, then say so (`attempt` is read after the loop)
        for attempt in range(3):  # noqa: B007
            shutil.rmtree(run, ignore_errors=True)
            shutil.rmtree(env["THAWING_CACHE"], ignore_errors=True)
            killed = train([str(cfg), "--run-dir", str(run)], env, (kind, run, at))
            if killed["killed"]:
                break
        leftovers = sorted(str(p.relative_to(run)) for p in run.rglob(".*")) if run.exists() else []
        if not killed["killed"]:  # the run ended before the point came (a window too short to catch)
            resumed = killed
        elif not (run / "config.yaml").is_file():  # killed before the run directory held anything to resume
            shutil.rmtree(run, ignore_errors=True)
            resumed = train([str(cfg), "--run-dir", str(run)], env)
        else:
            resumed = train(["--resume", str(run)], env)
        got = digest(run)
        row = {"point": i, "kind": kind, "at_s": at if kind == "time" else None, "killed": killed["killed"],
               "tries": attempt + 1,
               "killed_after_s": killed["seconds"], "leftovers": leftovers, "resume_rc": resumed["rc"],
               "identical": resumed["rc"] == 0 and got == expected,
               "differs": [k for k in COMPARED if got[k] != expected[k]]}
        if resumed["rc"] != 0:
            row["resume_error"] = resumed["stderr"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(env["THAWING_CACHE"], ignore_errors=True)
    report = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "model": args.model,
        "reference_s": reference["seconds"],
        "points": len(rows),
        "killed": sum(r["killed"] for r in rows),
        "identical": sum(r["identical"] for r in rows),
        "by_kind": {k: [sum(r["identical"] for r in rows if r["kind"] == k), sum(r["kind"] == k for r in rows)]
                    for k in KINDS},
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))
    write_report(report, args.output)


if __name__ == "__main__":
    main()
