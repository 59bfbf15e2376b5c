"""SIGINT and SIGTERM during training: the first one asks the loop to stop at the next update boundary (or the end of
the stage: the last stage included), after a checkpoint; a second SIGINT stops at once (a KeyboardInterrupt that says
how to resume from the last checkpoint)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from thawing.errors import Interrupted, StoppedAtOnce


class StopRequest:
    """Set by a signal handler, read by the loop after each update."""

    signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def stop_requests(run: Path, checkpoints: Path) -> Iterator[StopRequest]:
    """Catch SIGINT and SIGTERM for the block (main thread only: elsewhere Python cannot install handlers, and the
    block runs with the process's own handling). `run` is the run directory a resume names; `checkpoints` its
    checkpoints' folder."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def at_once(number, frame):  # noqa: ARG001 (a signal handler's signature)
        kept = (f"its last checkpoint is kept in {checkpoints}" if checkpoints.is_dir()
                else "no checkpoint had been written yet, so it starts again")
        raise StoppedAtOnce(f"SIGINT twice: training stopped at once; {kept}. Resume with: thawing train --resume "
                            f"{run}")

    def handle(number, frame):  # noqa: ARG001 (a signal handler's signature)
        request.signal = number
        signal.signal(signal.SIGINT, at_once)  # a second Ctrl-C does not wait

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def interrupted(ctx, stage) -> Interrupted:
    """The error that ends a run stopped by a signal, saying how to resume it."""
    name = signal.Signals(ctx.stop.signal).name
    saved = "a checkpoint was saved" if ctx.prep.config.train.checkpoint else "no checkpoint (train.checkpoint: false)"
    return Interrupted(f"{name}: training stopped in stage '{stage.name}' at step {ctx.state.step}; {saved}. "
                       f"Resume with: thawing train --resume {ctx.run.path}", ctx.stop.signal)
