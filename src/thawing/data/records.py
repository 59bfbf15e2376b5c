"""What a data record becomes: an `Example` (a text or a word list, with label ids), and the small helpers every task
type's reader shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thawing.errors import InputError

Record = tuple[int, Any, Any]  # (source line, the input, its label(s) as strings)


@dataclass
class Example:
    """One input: a text with a class id (or a list of them, multi-label), or tokens with one tag id per token."""

    text: str | None = None
    tokens: list[str] | None = None
    label: Any = 0


def field_value(record: dict, name: str, path: str, line: int) -> Any:
    """`record[name]`, or an error naming the file, line and field."""
    if name not in record:
        raise InputError("missing field", path=path, line=line, field=name)
    return record[name]


def sorted_labels(labels: set[str]) -> list[str]:
    """Labels in a stable id order: integer labels sort as numbers, so that 0..N keep their own value as id ("10"
    after "9"); others alphabetically."""
    try:
        return sorted(labels, key=lambda lab: (int(lab), lab))
    except ValueError:
        return sorted(labels)
