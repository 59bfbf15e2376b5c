"""The one way benchmark scripts write their JSON report."""

from __future__ import annotations

import json
from pathlib import Path

from thawing.store.atomic import write_text


def write_report(report: dict, output: str | None) -> None:
    """Write `report` to `output` (if given) atomically: a run cut short never leaves half a file."""
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        write_text(output, json.dumps(report, indent=2) + "\n")
