"""The run directory: the contract between a run and everything that reads it later. Every file and folder name of
a run and of a study is defined here, and nowhere else.

A run:
    config.yaml       the resolved config
    runtime.json      what the run ran on: device, precision, packing, compile (`thawing.runtime.Runtime`)
    metrics.jsonl     one JSON object per evaluation and task (stage, step, epoch, split, task, metrics)
    stages.json       one summary per stage
    results.json      {"tasks": {task: {metric: value}}, "score": ..., "splits": {task: split}}
    final/            encoder/ (sentence-transformers layout), heads.safetensors, labels.json, tasks.json
    checkpoints/      last/: the state after the last finished stage; step/: inside the stage under way
                      (training/checkpoint.py); removed when the run finishes, unless train.keep_checkpoints
    run.lock          held (fcntl) by the process that trains in this directory
    report/           report.md, curves.png, index.html (one self-contained page) and evaluation.json (the final
                      model's metrics, confusion matrices and per-entity scores per split), written by report.py

A study (several runs side by side, study.py):
    <scenario>/       one run directory per scenario (and seed)
    study.json, study.md, study.png, report/index.html

Files are written atomically and folders built aside, then renamed into place; an existing directory is never
reused.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from thawing.atomic import building, write_text
from thawing.config import RunConfig, dump_config
from thawing.errors import InputError

# A run's files and folders.
CONFIG = "config.yaml"
RUNTIME = "runtime.json"
METRICS = "metrics.jsonl"
STAGES = "stages.json"
RESULTS = "results.json"
FINAL = "final"
ENCODER = "encoder"  # inside final/
HEADS = "heads.safetensors"  # inside final/
LABELS = "labels.json"  # inside final/
TASKS = "tasks.json"  # inside final/
CHECKPOINTS = "checkpoints"
CHECKPOINT = Path(CHECKPOINTS) / "last"
STAGE_CHECKPOINT = Path(CHECKPOINTS) / "step"
LOCK = "run.lock"
REPORT = "report"
REPORT_MD = "report.md"  # inside report/
CURVES = "curves.png"  # inside report/
INDEX_HTML = "index.html"  # inside report/: the page people look at, every image inline
EVALUATION = "evaluation.json"  # inside report/: the final model per split, with confusion matrices
# A study's.
STUDY_JSON = "study.json"
STUDY_MD = "study.md"
STUDY_PNG = "study.png"


class RunDir:
    """Paths and writers for one run (or study) directory."""

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

    @classmethod
    def of_model(cls, path: str | Path) -> "RunDir":
        """The run that holds a trained model: `path` is the run directory or its `final/` folder."""
        path = Path(path)
        return cls(path if (path / FINAL).is_dir() or path.name != FINAL else path.parent)

    # ------------------------------------------------------------------ paths
    config = property(lambda self: self.path / CONFIG)
    runtime = property(lambda self: self.path / RUNTIME)
    metrics = property(lambda self: self.path / METRICS)
    stages = property(lambda self: self.path / STAGES)
    results = property(lambda self: self.path / RESULTS)
    final = property(lambda self: self.path / FINAL)
    encoder_dir = property(lambda self: self.path / FINAL / ENCODER)
    heads = property(lambda self: self.path / FINAL / HEADS)
    tasks = property(lambda self: self.path / FINAL / TASKS)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    checkpoint = property(lambda self: self.path / CHECKPOINT)
    stage_checkpoint = property(lambda self: self.path / STAGE_CHECKPOINT)
    report_dir = property(lambda self: self.path / REPORT)
    report_md = property(lambda self: self.path / REPORT / REPORT_MD)
    index_html = property(lambda self: self.path / REPORT / INDEX_HTML)
    evaluation = property(lambda self: self.path / REPORT / EVALUATION)
    study_json = property(lambda self: self.path / STUDY_JSON)
    study_md = property(lambda self: self.path / STUDY_MD)
    study_png = property(lambda self: self.path / STUDY_PNG)

    def is_study(self) -> bool:
        return self.study_json.is_file()

    @contextlib.contextmanager
    def replacing(self, target: Path) -> Iterator[Path]:
        """Build a folder that takes the place of `target` (inside this directory) when the block succeeds."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with building(target) as tmp:
            yield tmp

    # ------------------------------------------------------------------ writers
    def write_config(self, config: RunConfig) -> None:
        write_text(self.config, dump_config(config))

    def write_json(self, path: Path, data: object) -> None:
        """Write strict JSON (no NaN or Infinity) atomically."""
        write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")

    def log_metrics(self, record: dict) -> None:
        """Append one line of strict JSON; a line is small enough to be written whole."""
        with open(self.metrics, "a") as fh:
            fh.write(json.dumps(record, allow_nan=False) + "\n")

    def lock(self):
        """Take this directory for one process: an exclusive `fcntl` lock on run.lock, released when the returned file
        closes or the process ends (a killed process leaves no stale lock). A second process gets a clear error."""
        import fcntl
        import os

        handle = open(self.path / LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise InputError(f"this run directory is in use by {holder}; wait for it to end", path=self.path) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}\n")
        handle.flush()
        return handle

    def metrics_lines(self) -> int:
        return len(self.metrics.read_text().splitlines()) if self.metrics.is_file() else 0

    def keep_metrics(self, lines: int) -> None:
        """Cut metrics.jsonl back to its first `lines` lines (a resumed run drops what the stage it repeats wrote)."""
        if self.metrics.is_file():
            kept = self.metrics.read_text().splitlines()[:lines]
            write_text(self.metrics, "".join(line + "\n" for line in kept))

    def save_final(self, model) -> None:
        """Write final/: the encoder in sentence-transformers layout, the heads, their labels and specs."""
        from safetensors.torch import save_file

        from thawing.model.loading import save_encoder  # the model stack is loaded only when a model is saved

        with self.replacing(self.final) as tmp:
            save_encoder(model.encoder, tmp / ENCODER)
            state = {k: v.detach().contiguous().cpu() for k, v in model.heads.state_dict().items()}
            save_file(state, str(tmp / HEADS))
            (tmp / LABELS).write_text(json.dumps({t: s.labels for t, s in model.specs.items()}, indent=2) + "\n")
            (tmp / TASKS).write_text(json.dumps({t: asdict(s) for t, s in model.specs.items()}, indent=2) + "\n")

    # ------------------------------------------------------------------ readers
    def read_json(self, path: str | Path) -> dict:
        """A JSON file of the run: a path, or a name inside the run directory (e.g. `RESULTS`)."""
        path = self.path / path if isinstance(path, str) else path
        if not path.is_file():
            raise InputError("not found; is this a thawing run directory?", path=path)
        return json.loads(path.read_text())

    def primary_metrics(self) -> dict[str, str]:
        """Each task's primary metric (accuracy, or entity F1 for token tasks), from final/tasks.json."""
        from thawing.task_types import task_type

        return {t: task_type(spec["type"]).primary_metric for t, spec in self.read_json(self.tasks).items()}

    def read_metrics(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def load_heads_state(self) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.heads))
