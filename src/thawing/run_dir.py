"""The run directory: the contract between a run and everything that reads it later.

Layout:
    config.yaml       the resolved config
    metrics.jsonl     one JSON object per evaluation and task (stage, step, epoch, split, task, metrics)
    stages.json       one summary per stage
    results.json      {"tasks": {task: {metric: value}}, "score": ..., "splits": {task: split}}
    final/            encoder/ (sentence-transformers layout), heads.safetensors, labels.json, tasks.json
    checkpoints/last/ the state after the last finished stage, for resuming (training/checkpoint.py)
    report/           report.md, curves.png (written by report.py from the files above)

All paths live here. Files are written atomically; an existing directory is never reused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file

from thawing.atomic import write_text
from thawing.config import RunConfig, dump_config
from thawing.errors import InputError
from thawing.metrics import PRIMARY_METRIC


class RunDir:
    """Paths and writers for one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, name: str, explicit: str | Path | None = None, base: str | Path = "runs") -> "RunDir":
        """Make a new run directory: `explicit`, or `base/<name>-<timestamp>` (with a suffix if taken)."""
        if explicit is not None:
            path = Path(explicit)
            if path.exists():
                raise InputError("run directory already exists; choose another (runs are never overwritten)", path=path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()
            return cls(path)
        Path(base).mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in [""] + [f"-{i}" for i in range(2, 1000)]:
            path = Path(base) / f"{name}-{stamp}{suffix}"
            try:
                path.mkdir()  # mkdir is atomic: two runs started together never share a directory
                return cls(path)
            except FileExistsError:
                continue
        raise InputError("cannot find a free run directory name", path=base)

    # ------------------------------------------------------------------ paths
    @property
    def final(self) -> Path:
        return self.path / "final"

    @property
    def encoder_dir(self) -> Path:
        return self.final / "encoder"

    # ------------------------------------------------------------------ writers
    def write_config(self, config: RunConfig) -> None:
        write_text(self.path / "config.yaml", dump_config(config))

    def log_metrics(self, record: dict) -> None:
        """Append one line; a line is small enough to be written whole."""
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def metrics_lines(self) -> int:
        path = self.path / "metrics.jsonl"
        return len(path.read_text().splitlines()) if path.is_file() else 0

    def keep_metrics(self, lines: int) -> None:
        """Cut metrics.jsonl back to its first `lines` lines (a resumed run drops what the stage it repeats wrote)."""
        path = self.path / "metrics.jsonl"
        if path.is_file():
            kept = path.read_text().splitlines()[:lines]
            write_text(path, "".join(line + "\n" for line in kept))

    def write_json(self, name: str, data: object) -> None:
        write_text(self.path / name, json.dumps(data, indent=2) + "\n")

    def save_final(self, model) -> None:
        """Write final/ into a temporary folder, then rename it into place."""
        tmp = self.path / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        from thawing.model.loading import save_encoder  # the model stack is loaded only when a model is saved

        save_encoder(model.encoder, tmp / "encoder")
        state = {k: v.detach().contiguous().cpu() for k, v in model.heads.state_dict().items()}
        save_file(state, str(tmp / "heads.safetensors"))
        (tmp / "labels.json").write_text(json.dumps({t: s.labels for t, s in model.specs.items()}, indent=2) + "\n")
        (tmp / "tasks.json").write_text(json.dumps({t: asdict(s) for t, s in model.specs.items()}, indent=2) + "\n")
        os.replace(tmp, self.final)

    # ------------------------------------------------------------------ readers
    def read_json(self, name: str) -> dict:
        path = self.path / name
        if not path.is_file():
            raise InputError("not found; is this a thawing run directory?", path=path)
        return json.loads(path.read_text())

    def primary_metrics(self) -> dict[str, str]:
        """Each task's primary metric (accuracy, or entity F1 for token tasks), from final/tasks.json."""
        return {t: PRIMARY_METRIC[spec["type"]] for t, spec in self.read_json("final/tasks.json").items()}

    def read_metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    def load_heads_state(self) -> dict:
        return load_file(str(self.final / "heads.safetensors"))
