"""Rows in memory (Python API): what a task's split may be besides a path, and how such rows become the JSON values
that the run directory's copy of them holds (config.py validates with these; run_dir.py writes the copy).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

InlineRows = list[dict[str, Any]]
"""A split given in memory (Python API): rows of JSON values, as the run directory's JSONL copy holds them."""


def split_source(value: Any) -> str | InlineRows | None:
    """A task's split: a file (or HF dataset) path, or rows in memory: a list of dicts, or a `datasets.Dataset`
    (ClassLabel ids become their names, as in `format: hf`)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if is_hf(value, "Dataset"):
        from thawing.data.readers import dataset_records

        return dataset_records(value)
    if isinstance(value, (list, tuple)):
        for index, row in enumerate(value):
            if not isinstance(row, Mapping):
                raise ValueError(f"row {index} is a {type(row).__name__}: rows in memory are dicts of field names "
                                 "to values")
        return [dict(row) for row in value]
    raise ValueError(f"expected a file path, a list of rows (dicts) or a datasets.Dataset, got {type(value).__name__}")


def is_hf(value: Any, name: str) -> bool:
    """Whether `value` is a `datasets.<name>` (Dataset, DatasetDict), without importing datasets."""
    return type(value).__name__ == name and type(value).__module__.split(".")[0] == "datasets"


def dataset_dict_splits(value: Any) -> Any:
    """A `datasets.DatasetDict` given as a task's data: its train, dev (or validation) and test splits; others (e.g.
    imdb's unsupervised) are not read."""
    if not is_hf(value, "DatasetDict"):
        return value
    from thawing.data.readers import HF_SPLITS

    found = {ours: next((value[n] for n in names if n in value), None) for ours, names in HF_SPLITS.items()}
    return {split: part for split, part in found.items() if part is not None}


def json_value(value: Any, where: str) -> Any:
    """`value` as JSON gives it back (tuples become lists, numpy scalars and arrays Python numbers and lists)."""
    def plain(item: Any) -> Any:
        if type(item).__module__ == "numpy" and hasattr(item, "tolist"):
            return item.tolist()
        raise TypeError(type(item).__name__)

    try:
        return json.loads(json.dumps(value, default=plain))
    except TypeError as exc:
        raise ValueError(f"{where}: a {exc} cannot be written to the run directory's JSONL copy of the data") from None
    except (ValueError, RecursionError) as exc:  # a list that holds itself
        raise ValueError(f"{where}: cannot be written as JSON ({exc})") from None
