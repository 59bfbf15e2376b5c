"""What every stage of one run shares (`Context`), passed explicitly from `loop.start` to the stages: the prepared data
and model, the run directory and its lock, the runtime and accelerator, the progress (`TrainState`), probes,
anchoring, trackers, and whether a signal asked training to stop."""

from __future__ import annotations

from dataclasses import dataclass, field

from thawing.model.runtime import Runtime
from thawing.store import metric_lines
from thawing.store.run_dir import RunDir
from thawing.training.checkpoint import TrainState
from thawing.training.events import Callback
from thawing.training.probes import Probes
from thawing.training.retain import Pretrained
from thawing.training.setup import Prepared
from thawing.training.signals import StopRequest
from thawing.training.tracking import Trackers


@dataclass
class Context:
    """What every stage of one run shares, passed explicitly."""

    prep: Prepared
    run: RunDir
    runtime: Runtime
    accelerator: object
    state: TrainState
    events: Callback  # every callback of the run (training/events.py), the main process's; a no-op elsewhere
    lock: object = None  # the run directory's lock (`RunDir.lock`), held until the run ends
    probes: Probes | None = None  # retention probes, with their pretrained side
    pretrained: Pretrained | None = None  # what anchoring (`retain`) compares against
    trackers: Trackers | None = None  # live views of metrics.jsonl (`train.report_to`), the main process's
    stop: StopRequest = field(default_factory=StopRequest)  # SIGINT/SIGTERM asked training to stop
    main: bool = True  # this process writes the run directory and logs (the only one, or rank 0 of several)
    fsdp: object = None  # FSDP settings when the launcher asked for FSDP (training/stepping.py), else None

    @property
    def model(self):
        return self.prep.model

    def log(self, record: dict) -> None:
        """One record to metrics.jsonl and to every tracker (the main process's; the others hold the same values)."""
        if not self.main:
            return
        self.run.log_metrics(record)
        if self.trackers is not None:
            self.trackers.log(record)

    def probe(self, point: str, groups: dict) -> None:
        """Measure every probe at `point` (`metric_lines.START`, or the stage that just ended) and log it."""
        if self.probes is None:
            return
        values = self.probes.pretrained if point == metric_lines.START else self.probes.measure(groups)
        for name, metrics in values.items():
            self.log(metric_lines.probe(point, self.state.step, name, metrics))
        self.state.probes, self.state.probe_seconds = values, self.probes.seconds
