"""Collect LoRA-against-full-layers runs into one JSON: per run each task's test accuracy, the test score, the best dev
score, trainable parameters (the largest stage; adapters counted), optimizer updates, stage wall time and the STS-B
retention probe (results.json `probes`). Reads run directories only: a study's scenario folders or single runs.

Run (after bench/configs/lora_trec_sst2.yaml ran, see docs/benchmarks.md):
    .venv/bin/python bench/lora.py /tmp/lora-study/lora /tmp/lora-study/progressive /tmp/lora-study/full \
        --output bench/results/lora_trec_sst2.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path


def summarize(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    stages = json.loads((run / "stages.json").read_text())
    probes = results.get("probes", {})
    return {
        "run": str(run),
        "stages": [s["stage"] for s in stages],
        "accuracy": {task: metrics["accuracy"] for task, metrics in results["tasks"].items()},
        "test_score": results["score"],
        "best_dev_score": max(s["best_score"] for s in stages if s.get("best_score") is not None),
        "trainable_params": max(s.get("trainable_params", 0) for s in stages),
        "adapter_params": sum(s["lora"]["params"] for s in stages if "lora" in s),
        "updates": sum(s.get("updates", 0) for s in stages),
        "stage_wall_s": {s["stage"]: s.get("wall_s") for s in stages},
        "wall_s": round(sum(s.get("wall_s") or 0 for s in stages), 1),
        "probes": {name: {k: v for k, v in values.items() if k != "weight_norm_change"} for name, values in
                   probes.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    rows = [summarize(run) for run in args.runs]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": platform.platform(), "runs": rows}, indent=2) + "\n")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
