"""Errors that the CLI turns into a clear message and exit code 2.

Anything the user can fix (a bad file, a bad config, a model name that cannot be found) raises a
`ThawingError`; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class InMemory(str):
    """Stands where a file path would for rows given in memory (Python API), e.g. `tasks.sentiment.data.train (in
    memory)`: an error then names the row by its index in the list (0-based) where a file's names its line."""


def place(path: str | Path | None, line: int) -> str:
    """`line 3` in a file; `row 2` in memory (lines count from 1, list indexes from 0)."""
    return f"row {line - 1}" if isinstance(path, InMemory) else f"line {line}"


class ThawingError(Exception):
    """Base class for user-facing errors; the CLI prints the message and exits with `exit_code`."""

    exit_code = 2


class InputError(ThawingError):
    """Bad input data. The message names the file, the line (1-based) and the field where known.

    Example:
        >>> str(InputError("not valid JSON", path="train.jsonl", line=3))
        'train.jsonl, line 3: not valid JSON'
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path, self.line, self.field = path, line, field
        where = [str(path)] if path is not None else []
        if line is not None:
            where.append(place(path, line))
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class ConfigError(ThawingError):
    """An invalid config; the message lists every problem found, one per line."""


class ModelNotFoundError(ThawingError):
    """A model name that resolves to nothing; the message lists every place that was tried."""


class NonFiniteError(ThawingError):
    """A non-finite loss or gradient during training; the run stops and its last good checkpoint stays."""


class DiskFullError(ThawingError):
    """The disk filled up while a file or folder was written; nothing of it was kept."""

    def __init__(self, message: str, path: str | Path, free: int) -> None:
        super().__init__(message)
        self.path, self.free = Path(path), free


class Interrupted(ThawingError):
    """SIGINT or SIGTERM stopped training at an update boundary, after a checkpoint: exit 130 or 143 (128 + signal)."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGINT while training waited for an update boundary: training stops at once, without a checkpoint of
    its own. A KeyboardInterrupt still (so nothing catches it on the way out); the CLI prints it and exits 130."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
