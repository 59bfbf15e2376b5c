"""One scenario's training, measured: wall time and peak memory, honestly attributed to that scenario.

Peak CPU memory is the process's resident high-water mark, which never goes down: measured in a process that
already trained another scenario it would report that one's peak. So a study trains each scenario in its own process
(`python -m thawing study-run ...`) by default, and the figure is that process's peak up to the final model's results
(imports, data, model, caches, training, the final scoring; not the report written after, which loads the model
again: `process_rss_peak_bytes` is the whole process's, report included). The scenario's process reads both itself
(`peak_rss_bytes`), not `getrusage`/`wait4` in the study: see there. `process_s` is the time from loading the data
and model to the final results.
In-process runs (`isolate=False`) leave CPU memory unmeasured. GPU memory is `torch.cuda.max_memory_allocated`
after `reset_peak_memory_stats`, which is per scenario either way.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

from thawing.config import RunConfig
from thawing.errors import Interrupted, ThawingError
from thawing.training.events import Callback, Event, Finished


def peak_rss_bytes() -> int:
    """This process's own peak resident memory in bytes: `VmHWM` from /proc/self/status where there is one (Linux),
    else `ru_maxrss` (KiB on Linux, bytes on macOS).

    Not `ru_maxrss` on Linux: it is kept across fork and exec, so a scenario's process started by a study that had
    already loaded a model would report the study's peak as its own (an 8 MiB child of a 411 MiB parent reads 411 MiB,
    and so does `wait4`'s usage of it). `VmHWM` belongs to the memory map, which exec replaces: it counts only what
    this program touched. Reading it here, in the scenario's process, is simpler than starting scenarios from a light
    process spawned before anything heavy was imported, and stays right whoever starts the study."""
    status = Path("/proc/self/status")
    with contextlib.suppress(OSError):
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # "VmHWM:   123456 kB"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def train_measured(config: RunConfig, run_dir: str, callbacks: Sequence[Callback] = (),
                   run_optional: bool | None = None, own_process: bool = False) -> dict:
    """Train `config` into `run_dir` in this process; returns the measurement (see the module docstring). Memory is
    read when the loop reports the final results, before the report (which loads the model again) is written, and
    again after it (`process_rss_peak_bytes`); only where `own_process` (the scenario's own process), else None."""
    import torch

    from thawing.reporting.report import report_finished
    from thawing.training.loop import train

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started, seen = time.perf_counter(), {}

    def hook(event: Event) -> None:
        if isinstance(event, Finished):
            seen["rss"] = peak_rss_bytes() if own_process else None
            seen["gpu"] = int(torch.cuda.max_memory_allocated()) if cuda else None
            seen["seconds"] = round(time.perf_counter() - started, 2)

    run = train(config, run_dir=run_dir, callbacks=[hook, *callbacks], run_optional=run_optional)
    report_finished(run.path)
    measured = {"rss_peak_bytes": seen.get("rss"), "gpu_peak_bytes": seen.get("gpu"), "process_s": seen.get("seconds")}
    if own_process:
        measured["process_rss_peak_bytes"] = peak_rss_bytes()  # the whole process, report included
    return measured


def config_yaml(config: RunConfig) -> str:
    """The config for another process: only the keys that were set, since a preset takes `train.epochs` and
    `train.lr` only where the config set them (a full dump would set them all), and tasks in their order (which
    seeds their batches)."""
    return yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True), sort_keys=False)


def train_isolated(config: RunConfig, run_dir: str, scratch: Path, run_optional: bool | None = None) -> dict:
    """Train `config` into `run_dir` in a child process (`thawing study-run`), which prints its own progress; returns
    its measurement.

    Raises:
        ThawingError: the child failed (its message is on stderr above), with its exit code.
        Interrupted: Ctrl-C or SIGTERM stopped it (after the child saved a checkpoint).
    """
    fd, cfg_path = tempfile.mkstemp(dir=scratch, prefix=".scenario-", suffix=".yaml")
    os.close(fd)
    out_path = Path(cfg_path).with_suffix(".json")
    try:
        Path(cfg_path).write_text(config_yaml(config))
        command = [sys.executable, "-m", "thawing", "study-run", cfg_path, run_dir, str(out_path)]
        child = subprocess.Popen(command + (["--full"] if run_optional else []))
        with _forwarding_sigterm(child):
            try:
                _, status = os.waitpid(child.pid, 0)
            except KeyboardInterrupt:  # the child got the same SIGINT: it checkpoints and stops; wait for it
                os.waitpid(child.pid, 0)
                raise Interrupted("the study was interrupted; completed scenarios are kept", signal.SIGINT) from None
        child.returncode = code = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
        if code in (130, 143) or code < 0:  # stopped after a checkpoint, or killed by a signal before training
            number = code - 128 if code > 0 else -code
            raise Interrupted(f"the scenario's training stopped on signal {number}; completed scenarios are kept",
                              number)
        if code != 0:
            error = ThawingError(f"the scenario's training failed with exit code {code} (its message is above)")
            error.exit_code = code if 0 < code < 128 else 1
            raise error
        return json.loads(out_path.read_text())  # its peaks as it read them itself: wait4's would include ours
    finally:
        for path in (Path(cfg_path), out_path):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _forwarding_sigterm(child: subprocess.Popen) -> Iterator[None]:
    """A SIGTERM to the study goes on to the scenario's process, which checkpoints and stops (exit 143), instead of
    leaving it training on its own; a repeated one is harmless (training stops once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda number, frame: child.send_signal(number))  # noqa: ARG005 (a signal handler's signature)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
