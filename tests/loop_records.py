"""Hand-made records of the kinds the training loop is gaining (retention probes, training lines, probe results), in
the contract's shapes, added to a real run directory so the report and the study are tested before the loop writes
them. When the loop writes them itself, the same tests run on its records unchanged.

Probe lines:    {"stage": "start" | <stage just ended>, "step", "epoch": None, "split": "probe", "task": <probe>,
                 "metrics": {...}}
Training lines: {"stage", "step", "split": "train", "task", "loss", "lr": {group: lr}, "examples_per_s", "time",
                 "batches"}
results.json:   "probes": {probe: {metric: end value, "pretrained_<metric>": start value}}, "probe_seconds",
                "frozen_heads": {task: {"metric", "start", "end", "change"}}
"""

from __future__ import annotations

import json
from pathlib import Path


def stage_ends(run: Path) -> list[tuple[str, int]]:
    """(stage, step at its end), from the run's own lines and stages.json (cumulative updates)."""
    stages = json.loads((run / "stages.json").read_text())
    ends, step = [], 0
    for s in stages:
        step += s.get("updates", 0)
        ends.append((s["stage"], step))
    return ends


def probe_lines(run: Path, retention: dict[str, float], drift: dict[str, float]) -> list[dict]:
    """Probe lines at the start and after each stage: STS-like similarity, a transfer probe, a drift probe.
    `retention[stage]` and `drift[stage]` give each point's values (the start keeps 1.0 and drifts 0)."""
    lines, points = [], [("start", 0)] + stage_ends(run)
    for stage, step in points:
        kept = 1.0 if stage == "start" else retention[stage]
        moved = 0.0 if stage == "start" else drift[stage]
        for probe, metric, base in (("stsb", "spearman", 0.80), ("sst2_transfer", "accuracy", 0.70)):
            lines.append({"stage": stage, "step": step, "epoch": None, "split": "probe", "task": probe,
                          "metrics": {metric: base * kept, f"{metric}_retention": kept}})
        lines.append({"stage": stage, "step": step, "epoch": None, "split": "probe", "task": "drift",
                      "metrics": {"drift": moved, "weight_norm_change": {"embeddings": moved / 4, "layers.0": moved / 2,
                                                                         "layers.1": moved}}})
    return lines


def training_lines(run: Path, tasks: list[str], groups: list[str]) -> list[dict]:
    """One training line per update, the tasks taking turns (so each task's share is known), with falling losses and
    a learning rate per group that decays linearly within each stage."""
    lines, start = [], 0
    for stage, end in stage_ends(run):
        for step in range(start + 1, end + 1):
            task = tasks[(step - 1) % len(tasks)]
            left = (end - step) / max(1, end - start)
            lines.append({"stage": stage, "step": step, "split": "train", "task": task, "loss": 2.0 / step,
                          "lr": {g: 1e-3 * (0.5 ** i) * left + 1e-6 for i, g in enumerate(groups)},
                          "examples_per_s": 100.0, "time": 1_700_000_000 + step, "batches": 1})
        start = end
    return lines


def add_loop_records(run: Path, retention: dict[str, float], drift: dict[str, float], training: bool = True,
                     frozen_heads: dict | None = None) -> None:
    """Append probe (and training) lines to metrics.jsonl, and probe results to results.json."""
    results = json.loads((run / "results.json").read_text())
    tasks = list(results["tasks"])
    probes = probe_lines(run, retention, drift)
    extra = probes + (training_lines(run, tasks, ["embeddings", "layers.0", "layers.1", *(f"head:{t}" for t in tasks)])
                      if training else [])
    # The loop writes training lines of its own; with `training`, these known ones take their place.
    kept = [line for line in (run / "metrics.jsonl").read_text().splitlines()
            if not (training and json.loads(line).get("split") == "train")]
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in kept + [json.dumps(x) for x in extra]))
    start = {line["task"]: line["metrics"] for line in probes if line["stage"] == "start"}
    end = {line["task"]: line["metrics"] for line in probes}  # the last point wins
    results["probes"] = {
        name: {**{k: v for k, v in end[name].items() if not isinstance(v, dict)},
               **{f"pretrained_{k}": v for k, v in start[name].items() if not isinstance(v, dict)
                  and not k.endswith("_retention")}}
        for name in end
    }
    results["probe_seconds"] = 1.5
    if frozen_heads is not None:
        results["frozen_heads"] = frozen_heads
    (run / "results.json").write_text(json.dumps(results, indent=2))
