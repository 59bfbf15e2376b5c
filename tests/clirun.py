"""The CLI in-process, the way `thawing.cli.main()` runs it: a user error (`ThawingError`) becomes exit code 2 and
its message. Shared by the tests that drive commands."""

from __future__ import annotations

from typer.testing import CliRunner

from thawing.cli import app
from thawing.errors import ThawingError


def invoke(*args: str, stdout: bool = False) -> tuple[int, str]:
    """(exit code, output) of `thawing ARGS`; `stdout`: on success, what went to stdout alone (a command's result)."""
    try:
        result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    except ThawingError as exc:
        return 2, str(exc)
    return result.exit_code, result.stdout if stdout and result.exit_code == 0 else result.output
