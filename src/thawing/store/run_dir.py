"""The run directory: the contract between a run and everything that reads it later. Every file and folder name of
a run and of a study is defined here, and nowhere else.

A run:
    config.yaml       the resolved config
    data/             <task>_<split>.jsonl: a copy of each split that the config gave in memory (Python API), named
                      in config.yaml, so `--resume` and `evaluate` read the same rows
    config_record.json  the config as the run trains with it (config.yaml read back) and every change a resume was
                      allowed (`--allow-config-change`); a resume refuses any other edit of config.yaml
    runtime.json      what the run ran on: device, precision, packing, compile (`thawing.model.runtime.Runtime`), and
                      world_size and distributed (ddp, fsdp or null): the processes that trained it
    metrics.jsonl     one JSON object per evaluation and task (stage, step, epoch, split, task, metrics)
    stages.json       one summary per stage
    results.json      {"tasks": {task: {metric: value}}, "score": ..., "splits": {task: split}}
    final/            encoder/ (sentence-transformers layout), heads.safetensors, labels.json, tasks.json,
                      manifest.json (the sha256 of each file and the labels, checked by `thawing.load`),
                      README.md (the model card, model_card.py); what `thawing push` uploads to a Hugging Face
                      repo (hub.py), whose download `thawing.load` reads as a final/ folder on its own
    checkpoints/      last/: the state after the last finished stage; step/: inside the stage under way
                      (training/checkpoint.py); removed when the run finishes, unless train.keep_checkpoints
    run.lock          held (filelock) by the process that trains in this directory, its PID in run.lock.pid; gone
                      once the run has finished
    tensorboard/      event files, with train.report_to: [tensorboard] (tracking.py)
    report/           report.md, curves.png, index.html (one self-contained page) and evaluation.json (the final
                      model's metrics, confusion matrices and per-entity scores per split), written by report.py
    interpolate/      `thawing interpolate`: one heads-only run per alpha, interpolate.json, interpolate.png;
    final-interpolated/  the chosen alpha's final/ (interpolate.py)

An ONNX export (export.py), a folder of its own: model.onnx, thawing_onnx.json, the tokenizer's files.

A study (several runs side by side, study.py):
    <scenario>/       one run directory per scenario (and seed)
    study.json, study.md, study.png, report/index.html

A tune (`thawing tune`, study/tune.py):
    tune_config.yaml  the config the study searches with (a --resume must give the same)
    journal.log       the Optuna study (journal storage), unless --storage names a database
    trials/trial-<n>/ one run directory per trial (dev only: no test split); only the chosen ones keep final/, with
                      test.json (the test split, scored once)
    tune.json, best_plan.yaml (a schedule file), report/index.html and report/tune.png

Files are written atomically and folders built aside, then renamed into place; an existing directory is never
reused.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from thawing.config import RunConfig, dump_config
from thawing.errors import DiskFullError, InputError
from thawing.model.saved import ENCODER, FINAL, HEADS, LABELS, TASKS
from thawing.store import manifest, metric_lines
from thawing.store.atomic import building, write_text

# A run's files and folders.
CONFIG = "config.yaml"
RUNTIME = "runtime.json"
CONFIG_RECORD = "config_record.json"  # the config the run trains with, and the changes a resume was allowed
DATA = "data"
METRICS = "metrics.jsonl"
STAGES = "stages.json"
RESULTS = "results.json"
MANIFEST = "manifest.json"  # inside final/
MODEL_CARD = "README.md"  # inside final/ (not in the manifest: a card may be edited)
UNCHECKED = (MANIFEST, MODEL_CARD)  # final/'s files that the manifest does not cover
CHECKPOINTS = "checkpoints"
CHECKPOINT = Path(CHECKPOINTS) / "last"
STAGE_CHECKPOINT = Path(CHECKPOINTS) / "step"
LOCK = "run.lock"
LOCK_HOLDER = "run.lock.pid"  # who holds the lock (the lock file itself is truncated by whoever tries it)
REPORT = "report"
REPORT_MD = "report.md"  # inside report/
CURVES = "curves.png"  # inside report/
INDEX_HTML = "index.html"  # inside report/: the page people look at, every image inline
EVALUATION = "evaluation.json"  # inside report/: the final model per split, with confusion matrices
# Weight interpolation's (interpolate.py), inside a run.
INTERPOLATE = "interpolate"
INTERPOLATE_JSON = "interpolate.json"  # inside interpolate/
INTERPOLATE_PNG = "interpolate.png"  # inside interpolate/
INTERPOLATED_FINAL = "final-interpolated"
# An ONNX export's.
ONNX_MODEL = "model.onnx"
ONNX_META = "thawing_onnx.json"
# A study's.
STUDY_JSON = "study.json"
STUDY_MD = "study.md"
STUDY_PNG = "study.png"
# A tune's.
TUNE_CONFIG = "tune_config.yaml"
TUNE_JOURNAL = "journal.log"
TUNE_TRIALS = "trials"
TUNE_JSON = "tune.json"
TUNE_PNG = "tune.png"  # inside report/
BEST_PLAN = "best_plan.yaml"
TRIAL_TEST = "test.json"  # inside a chosen trial's run: its test split, scored once


class RunLock:
    """A run directory taken by this process (`RunDir.lock`). Leaving its `with` block normally (the run finished)
    removes the lock's files; an error or a signal releases the lock and leaves them (a run to resume)."""

    def __init__(self, lock, path: Path):
        self._lock, self._path = lock, path

    def close(self, finished: bool = False) -> None:
        (self._path / LOCK_HOLDER).unlink(missing_ok=True)
        self._lock.release()
        if finished:  # nothing will take this run again for training: no files left behind
            (self._path / LOCK).unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, kind, value, traceback) -> None:  # noqa: ARG002 (the context-manager protocol)
        self.close(finished=kind is None)


class RunDir:
    """Paths and writers for one run (or study) directory."""

    def __init__(self, path: str | Path, final: str | Path | None = None):
        self.path = Path(path)
        # A trained model's folder on its own (a Hugging Face download, a copy of final/) has no run around it.
        self._final = Path(final) if final is not None else None

    def __repr__(self) -> str:
        """The folder, and the final score once the run has finished (`thawing.train` returns a RunDir)."""
        try:
            score = json.loads(self.results.read_text())["score"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"RunDir({str(self.path)!r})"
        return f"RunDir({str(self.path)!r}, score={score:.4f})"

    @classmethod
    def create(cls, name: str, explicit: str | Path | None = None, base: str | Path = "runs") -> RunDir:
        """Make a new run directory: `explicit`, or `base/<name>-<timestamp>` (with a suffix if taken)."""
        if explicit is not None:
            path = Path(explicit)
            cls.check_creatable(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.mkdir()
            except FileExistsError:
                raise InputError("run directory already exists; choose another (runs are never overwritten)",
                                 path=path) from None
            except OSError as exc:
                raise InputError(f"cannot create the run directory: {exc.strerror or exc}", path=path) from None
            return cls(path)
        cls.check_creatable(base=base)
        try:
            Path(base).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the runs folder: {exc.strerror or exc}", path=base) from None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in [""] + [f"-{i}" for i in range(2, 1000)]:
            path = Path(base) / f"{name}-{stamp}{suffix}"
            try:
                path.mkdir()  # mkdir is atomic: two runs started together never share a directory
                return cls(path)
            except FileExistsError:
                continue
            except OSError as exc:
                raise InputError(f"cannot create the run directory: {exc.strerror or exc}", path=path) from None
        raise InputError("cannot find a free run directory name", path=base)

    @staticmethod
    def check_creatable(explicit: str | Path | None = None, base: str | Path = "runs") -> None:
        """Fail now where `create` would fail later (after the data and the model have loaded): `explicit` exists,
        or it (or `base`, for a named run) cannot be made under a file or in a read-only place. Creates nothing.

        Raises:
            InputError: naming the path and why.
        """
        path = Path(explicit) if explicit is not None else Path(base)
        if explicit is not None and (path.exists() or path.is_symlink()):
            raise InputError("run directory already exists; choose another (runs are never overwritten)", path=path)
        problem = folder_problem(path)
        if problem:
            what = "the run directory" if explicit is not None else "the runs folder"
            raise InputError(f"cannot create {what}: {problem}", path=path)

    @classmethod
    def of_model(cls, path: str | Path) -> RunDir:
        """The run that holds a trained model: `path` is the run directory or its `final/` folder; or a model folder
        on its own (tasks.json in it, no run around it: a Hugging Face download, `final-interpolated/`), whose run
        files (config.yaml, results.json, ...) are then absent."""
        path = Path(path)
        if (path / FINAL).is_dir() or (path.name != FINAL and not (path / TASKS).is_file()):
            return cls(path)
        return cls(path.parent) if path.name == FINAL else cls(path, final=path)

    # ------------------------------------------------------------------ paths
    config = property(lambda self: self.path / CONFIG)
    runtime = property(lambda self: self.path / RUNTIME)
    config_record = property(lambda self: self.path / CONFIG_RECORD)
    metrics = property(lambda self: self.path / METRICS)
    stages = property(lambda self: self.path / STAGES)
    results = property(lambda self: self.path / RESULTS)
    final = property(lambda self: self._final or self.path / FINAL)
    manifest = property(lambda self: self.final / MANIFEST)
    # A pushed repo holds the encoder at its root (sentence-transformers layout), beside tasks.json (deploy/hub.py).
    encoder_dir = property(lambda self: self.final / ENCODER if (self.final / ENCODER).is_dir()
                           or not (self.final / "modules.json").is_file() else self.final)
    heads = property(lambda self: self.final / HEADS)
    tasks = property(lambda self: self.final / TASKS)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    model_card = property(lambda self: self.final / MODEL_CARD)
    checkpoint = property(lambda self: self.path / CHECKPOINT)
    interpolate_dir = property(lambda self: self.path / INTERPOLATE)
    interpolate_json = property(lambda self: self.path / INTERPOLATE / INTERPOLATE_JSON)
    interpolate_png = property(lambda self: self.path / INTERPOLATE / INTERPOLATE_PNG)
    interpolated_final = property(lambda self: self.path / INTERPOLATED_FINAL)
    stage_checkpoint = property(lambda self: self.path / STAGE_CHECKPOINT)
    report_dir = property(lambda self: self.path / REPORT)
    report_md = property(lambda self: self.path / REPORT / REPORT_MD)
    index_html = property(lambda self: self.path / REPORT / INDEX_HTML)
    evaluation = property(lambda self: self.path / REPORT / EVALUATION)
    study_json = property(lambda self: self.path / STUDY_JSON)
    study_md = property(lambda self: self.path / STUDY_MD)
    study_png = property(lambda self: self.path / STUDY_PNG)
    tune_config = property(lambda self: self.path / TUNE_CONFIG)
    tune_journal = property(lambda self: self.path / TUNE_JOURNAL)
    tune_json = property(lambda self: self.path / TUNE_JSON)
    tune_png = property(lambda self: self.path / REPORT / TUNE_PNG)
    best_plan = property(lambda self: self.path / BEST_PLAN)
    trial_test = property(lambda self: self.path / TRIAL_TEST)

    def trial_dir(self, number: int) -> Path:
        """A tune's run directory of trial `number`."""
        return self.path / TUNE_TRIALS / f"trial-{number:04d}"

    def data_copy(self, task: str, split: str) -> Path:
        """The JSONL copy of a split given in memory. A task name may hold "_", but the split (train, dev, test) is
        always the last part, so `<task>_<split>` stays unambiguous."""
        return self.path / DATA / f"{task}_{split}.jsonl"

    def tracker_dir(self, name: str) -> Path:
        """Where tracker `name` (e.g. tensorboard) writes its files."""
        return self.path / name

    def stands_alone(self) -> bool:
        """Whether this is a model folder without its run around it (see `of_model`): no config.yaml, results.json."""
        return self._final is not None

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
        """config.yaml. A split given in memory is first copied to `data_copy(task, split)`, which config.yaml names
        in its place (a config file can name files only)."""
        write_text(self.config, dump_config(self.copy_data(config)))

    def copy_data(self, config: RunConfig) -> RunConfig:
        """Write each split given in memory as JSONL under data/; returns the config with their paths instead."""
        tasks = dict(config.tasks)
        for name, task in config.tasks.items():
            paths = {}
            for split in task.data.in_memory():
                path = self.data_copy(name, split)
                path.parent.mkdir(exist_ok=True)
                # The rows are JSON values already (config.py), so this copy reads back exactly as they are.
                write_text(path, "".join(json.dumps(row) + "\n" for row in getattr(task.data, split)))
                paths[split] = str(path.resolve())
            if paths:
                tasks[name] = task.model_copy(update={"data": task.data.model_copy(update=paths)})
        return config.model_copy(update={"tasks": tasks})

    def final_stamp(self) -> int:
        """What identifies the final model: the time its heads were written (final/ is replaced whole)."""
        return self.heads.stat().st_mtime_ns

    def write_evaluation(self, tasks: dict[str, dict[str, dict]]) -> None:
        """The final model's breakdown ({task: {split: entry}}, task_types/breakdown.py), stamped with the final model
        it describes, for the report to show."""
        self.evaluation.parent.mkdir(exist_ok=True)
        self.write_json(self.evaluation, {"final": self.final_stamp(), "tasks": tasks})

    def write_json(self, path: Path, data: object) -> None:
        """Write strict JSON (no NaN or Infinity) atomically."""
        write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")

    def log_metrics(self, record: dict) -> None:
        """Append one line of strict JSON; a line is small enough to be written whole."""
        with open(self.metrics, "a") as fh:
            fh.write(json.dumps(record, allow_nan=False) + "\n")

    def lock(self) -> RunLock:
        """Take this directory for one process: an exclusive lock on run.lock (filelock: fcntl on POSIX, msvcrt on
        Windows), released when it closes or the process ends (a killed process leaves no stale lock), its holder
        named in run.lock.pid. A second process gets a clear error naming the holder."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path / LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            try:
                holder = (self.path / LOCK_HOLDER).read_text().strip() or "another process"
            except OSError:
                holder = "another process"
            raise InputError(f"this run directory is in use by {holder}; wait for it to end", path=self.path) from None
        (self.path / LOCK_HOLDER).write_text(f"process {os.getpid()}\n")
        return RunLock(lock, self.path)

    def metrics_lines(self) -> int:
        return len(self.metrics.read_text().splitlines()) if self.metrics.is_file() else 0

    def keep_metrics(self, lines: int) -> None:
        """Cut metrics.jsonl back to its first `lines` lines (a resumed run drops what the stage it repeats wrote)."""
        if self.metrics.is_file():
            kept = self.metrics.read_text().splitlines()[:lines]
            write_text(self.metrics, "".join(line + "\n" for line in kept))

    def save_final(self, model) -> None:
        """Write final/: the encoder in sentence-transformers layout, the heads, their labels and specs, and last the
        manifest of them all (sha256 of every file, the labels), which `thawing.load` checks."""
        labels = {t: list(s.labels) for t, s in model.specs.items()}
        try:
            self._write_final(model, labels)
        except DiskFullError as exc:
            need = sum(t.numel() * t.element_size() for t in model.state_dict().values())  # and the tokenizer's files
            raise DiskFullError(f"{self.final}: the disk is full; final/ needs more than {need / 1e6:.1f} MB and "
                                f"{exc.free / 1e6:.1f} MB is free. Nothing of final/ was kept: free space, then "
                                f"finish the run with `thawing train --resume {self.path}`",
                                exc.path, exc.free) from exc

    def _write_final(self, model, labels: dict[str, list[str]]) -> None:
        from safetensors.torch import save_file

        from thawing.model.loading import save_encoder  # the model stack is loaded only when a model is saved

        with self.replacing(self.final) as tmp:
            # Each task's prompt becomes a named sentence-transformers prompt: encode(text, prompt_name=task).
            prompts = {task: spec.prompt for task, spec in model.specs.items() if spec.prompt}
            save_encoder(model.encoder, tmp / ENCODER, prompts=prompts)
            state = {k: v.detach().contiguous().cpu() for k, v in model.heads.state_dict().items()}
            save_file(state, str(tmp / HEADS))
            (tmp / LABELS).write_text(json.dumps(labels, indent=2) + "\n")
            specs = {t: asdict(s) for t, s in model.specs.items()}
            (tmp / TASKS).write_text(json.dumps(specs, indent=2, allow_nan=False) + "\n")
            (tmp / MANIFEST).write_text(json.dumps(manifest.build(tmp, labels, UNCHECKED), indent=2) + "\n")

    def verify_final(self, labels: dict[str, list[str]]) -> bool:
        """Check final/ and the `labels` read from its tasks.json against final/manifest.json. Returns False when
        there is no manifest (a run saved before manifests were written), which the caller warns about.

        Raises:
            InputError: naming every file that changed, went missing or was added, and every label list that differs.
        """
        if not self.manifest.is_file():
            return False
        found = manifest.problems(self.final, self.read_json(self.manifest), labels, UNCHECKED)
        if found:
            raise InputError("this model is not the one that was trained (its manifest.json does not match): "
                             + "; ".join(found) + ". Restore the folder from a good copy, or train again",
                             path=self.final)
        return True

    # ------------------------------------------------------------------ readers
    def read_json(self, path: str | Path) -> Any:
        """A JSON file of the run: a path, or a name inside the run directory (e.g. `RESULTS`).

        Raises:
            InputError: for a missing or unreadable file, or one that is not JSON (e.g. cut short by a crash or a
                full disk), naming the file and the line.
        """
        path = self.path / path if isinstance(path, str) else path
        if not path.is_file():
            raise InputError("not found; is this a thawing run directory?", path=path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror or exc}", path=path) from None
        except UnicodeDecodeError as exc:
            raise InputError(f"not UTF-8 text (byte {exc.start}): the file is damaged", path=path) from None
        return _parse_json(text, path)

    def primary_metrics(self) -> dict[str, str]:
        """Each task's primary metric (accuracy, or entity F1 for token tasks), from final/tasks.json."""
        from thawing.task_types import TASK_TYPES

        specs = self.read_json(self.tasks)
        if not isinstance(specs, dict) or not all(isinstance(s, dict) and s.get("type") in TASK_TYPES
                                                  for s in specs.values()):
            raise InputError("not an object of task specs with known types: the file is damaged", path=self.tasks)
        return {t: TASK_TYPES[spec["type"]].primary_metric for t, spec in specs.items()}

    def read_metrics(self) -> list[dict]:
        """The records of metrics.jsonl, in order ([] when there is none yet).

        Raises:
            InputError: naming the line of a record that is cut short or not a metrics record.
        """
        if not self.metrics.is_file():
            return []
        try:
            text = self.metrics.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read: {exc}", path=self.metrics) from None
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            record = _parse_json(line, self.metrics, number)
            if not metric_lines.is_record(record):
                raise InputError("not a metrics record (a JSON object with task, step and numeric metrics); the file "
                                 "is damaged", path=self.metrics, line=number)
            records.append(record)
        return records

    def load_heads_state(self) -> dict:
        """The heads' weights from final/heads.safetensors.

        Raises:
            InputError: for a missing file, or one that is not a whole safetensors file (cut short, damaged).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not self.heads.is_file():
            raise InputError("missing: the model's heads are not there", path=self.heads)
        try:
            return load_file(str(self.heads))
        except (SafetensorError, OSError) as exc:  # safetensors' own error type for a bad file
            raise InputError(f"cannot read the heads ({' '.join(str(exc).split())[:200]}): the file is cut short or "
                             "damaged", path=self.heads) from None


def folder_problem(path: str | Path) -> str | None:
    """Why a folder could not be made (or written in) at `path`, or None when it can: a part of the path is a file,
    or the nearest existing folder is read-only. Tries it for real (a probe folder, removed at once), since
    permission bits say nothing for root or for a read-only file system."""
    probe = Path(path)
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"'{probe}' is a file, not a folder"
    try:
        Path(tempfile.mkdtemp(dir=probe, prefix=".thawing-probe-")).rmdir()
    except OSError as exc:
        return f"cannot write in '{probe}' ({exc.strerror or exc})"
    return None


def _parse_json(text: str, path: Path, line: int | None = None) -> Any:
    """JSON, or an InputError naming the file and line (the `line` of a JSON Lines record)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = line if line is not None else exc.lineno
        raise InputError(f"not valid JSON ({exc.msg}, column {exc.colno}): the file is cut short or damaged",
                         path=path, line=where) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more digits than Python converts
        raise InputError(f"not valid JSON ({type(exc).__name__}): the file is damaged", path=path, line=line) from None
