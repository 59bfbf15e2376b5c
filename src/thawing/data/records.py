"""What a data record becomes: an `Example` (a text or a word list, with label ids), and the small helpers every task
type's reader shares."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from thawing.errors import InputError, place

Record = tuple[int, Any, Any]  # (source line, the input, its label(s) as strings)


@dataclass
class Example:
    """One input: a text with a class id (or a list of them, multi-label), tokens with one tag id per token, or the
    texts of a pair task (two sentences; a query, its positive and a hard negative) with a score, class id or ids."""

    text: str | None = None
    tokens: list[str] | None = None
    label: Any = 0
    texts: list[str] | None = None


def field_value(record: dict, name: str, path: str, line: int) -> Any:
    """`record[name]`, or an error naming the file, line and field."""
    if name not in record:
        raise InputError("missing field", path=path, line=line, field=name)
    return record[name]


def label_text(value: Any, path: str, line: int, field: str) -> str:
    """A label as the text its class is known by (`str()` of a string, number or boolean).

    Raises:
        InputError: for what `str()` would silently turn into a bogus class: None, a list or an object, an empty
            string, NaN or an infinity ("nan" from a missing value in a JSON export).
    """
    if value is None or isinstance(value, (list, dict)) or value == "":
        raise InputError(f"expected a label (string or number), got {value!r:.80}", path=path, line=line, field=field)
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"expected a label, got {value!r} (a missing value?)", path=path, line=line, field=field)
    return str(value)


def check_label_kinds(labels: Iterable[tuple[int, Any]], path: str, field: str) -> None:
    """Refuse a file whose labels mix booleans with strings or numbers: labels become text, and `str(True)` is "True",
    so a JSON `true` would silently join a "True" class, and never a "true" one. Numbers and strings may mix: `1` and
    "1" read the same, as a CSV file and a JSON file of the same data would give them. `labels` are (line, value or
    list of values) pairs.

    Raises:
        InputError: naming the first line whose label is of another kind than the first label's.
    """
    first: tuple[int, str, Any] | None = None
    for line, value in labels:
        for item in value if isinstance(value, list) else [value]:
            kind = _kind_of(item)
            if kind is None:
                continue
            if first is None:
                first = (line, kind, item)
            elif (kind == "boolean") != (first[1] == "boolean"):
                raise InputError(f"label {item!r:.40} is a {kind}, but the label on {place(path, first[0])} "
                                 f"({first[2]!r:.40}) is a {first[1]}: write booleans as strings, or every label as a "
                                 "boolean (labels become text, so true and \"True\" would be one class)", path=path,
                                 line=line, field=field)


def _kind_of(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    return "number" if isinstance(value, (int, float)) else None


def sorted_labels(labels: set[str]) -> list[str]:
    """Labels in a stable id order: integer labels sort as numbers, so that 0..N keep their own value as id ("10"
    after "9"); others alphabetically."""
    try:
        return sorted(labels, key=lambda lab: (int(lab), lab))
    except ValueError:
        return sorted(labels)
