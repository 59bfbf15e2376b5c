"""Turn a task's config into validated examples with integer labels, ready for training.

Every check that can fail on user data runs here, before any model is loaded, and `load_tasks`
reports the problems of all tasks (the first one per split file) in a single error.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

from thawing.config import SPLITS, TaskConfig
from thawing.data.readers import detect_format, read_rows
from thawing.data.tags import check_tags
from thawing.errors import InputError

logger = logging.getLogger(__name__)

# One parsed record: (source line, text or tokens, label or tags) with labels still as strings.
_Record = tuple[int, Any, Any]


@dataclass
class Example:
    """One input: a text with a class id, or tokens with one tag id per token."""

    text: str | None = None
    tokens: list[str] | None = None
    label: int | list[int] = 0


@dataclass
class TaskData:
    """A task's examples per split, with the label names that its ids index."""

    name: str
    type: str
    labels: list[str]
    splits: dict[str, list[Example]]
    dev_from_train: bool
    prompt: str | None = None
    sources: dict[str, str] = field(default_factory=dict)


def load_task(name: str, cfg: TaskConfig, seed: int = 0) -> TaskData:
    """Read, validate and label-encode one task; carve a dev split from train when none is given.

    Raises:
        InputError: The first problem in each split file (several are joined into one message).
    """
    data, errors = _load(name, cfg, seed)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise InputError(f"task '{name}': {len(errors)} problems:\n  " + "\n  ".join(map(str, errors)))
    assert data is not None
    return data


def load_tasks(tasks: dict[str, TaskConfig], seed: int = 0) -> dict[str, TaskData]:
    """Load every task, so that all bad inputs are reported together before training starts.

    Raises:
        InputError: Listing every problem found, one per line, each prefixed with its task name.
    """
    loaded: dict[str, TaskData] = {}
    problems: list[str] = []
    for name, cfg in tasks.items():
        data, errors = _load(name, cfg, seed)
        problems.extend(f"{name}: {err}" for err in errors)
        if data is not None:
            loaded[name] = data
    if problems:
        raise InputError(f"{len(problems)} problem(s) in the input data:\n  " + "\n  ".join(problems))
    return loaded


def _load(name: str, cfg: TaskConfig, seed: int) -> tuple[TaskData | None, list[InputError]]:
    paths = {split: getattr(cfg.data, split) for split in SPLITS if getattr(cfg.data, split) is not None}
    records: dict[str, list[_Record]] = {}
    errors: list[InputError] = []
    for split, path in paths.items():
        try:
            records[split] = _read_split(cfg, split, path)
        except InputError as exc:
            errors.append(exc)
    if "train" not in records and cfg.labels is None:
        return None, errors  # without train labels, dev/test labels cannot be checked
    try:
        labels = _label_set(cfg, records.get("train", []))
    except InputError as exc:
        return None, errors + [exc]
    splits: dict[str, list[Example]] = {}
    for split, recs in records.items():
        try:
            splits[split] = _encode(cfg, recs, labels, paths[split])
        except InputError as exc:
            errors.append(exc)
    if errors:
        return None, errors
    dev_from_train = "dev" not in splits
    if dev_from_train:
        try:
            splits["train"], splits["dev"] = _carve_dev(splits["train"], cfg.dev_fraction, seed, paths["train"])
        except InputError as exc:
            return None, [exc]
        paths["dev"] = paths["train"]
    splits = {split: splits[split] for split in SPLITS if split in splits}
    logger.info("task %s: %s, %d labels%s", name, ", ".join(f"{len(v)} {k}" for k, v in splits.items()),
                len(labels), " (dev carved from train)" if dev_from_train else "")
    data = TaskData(name=name, type=cfg.type, labels=labels, splits=splits, dev_from_train=dev_from_train,
                    prompt=cfg.prompt, sources={s: str(paths[s]) for s in SPLITS if s in paths})
    return data, []


def _read_split(cfg: TaskConfig, split: str, path: str) -> list[_Record]:
    fmt = detect_format(path, cfg.format)
    rows = read_rows(path, fmt, split)
    if split in cfg.limit:
        rows = rows[: max(cfg.limit[split], 0)]
    if not rows:
        limited = f" (after limit {cfg.limit[split]})" if split in cfg.limit else ""
        raise InputError(f"{split} split is empty{limited}", path=path)
    if cfg.type == "classification":
        return [_parse_text(cfg, path, line, record) for line, record in rows]
    # CoNLL files have no field names: the reader always produces tokens/tags.
    fields = ("tokens", "tags") if fmt == "conll" else (cfg.tokens_field, cfg.tags_field)
    return [_parse_tokens(fields, cfg.tag_scheme, path, line, record) for line, record in rows]


def _get(record: dict, name: str, path: str, line: int) -> Any:
    if name not in record:
        raise InputError("missing field", path=path, line=line, field=name)
    return record[name]


def _parse_text(cfg: TaskConfig, path: str, line: int, record: dict) -> _Record:
    text = _get(record, cfg.text_field, path, line)
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"expected a non-empty string, got {text!r}", path=path, line=line, field=cfg.text_field)
    label = _get(record, cfg.label_field, path, line)
    # str() of None, a list or an empty cell would silently become a bogus class name.
    if label is None or isinstance(label, (list, dict)) or label == "":
        raise InputError(f"expected a label (string or number), got {label!r}", path=path, line=line,
                         field=cfg.label_field)
    return line, text, str(label)


def _parse_tokens(fields: tuple[str, str], scheme: str, path: str, line: int, record: dict) -> _Record:
    tokens_field, tags_field = fields
    tokens = _get(record, tokens_field, path, line)
    tags = _get(record, tags_field, path, line)
    for name, value in ((tokens_field, tokens), (tags_field, tags)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"expected a list of strings, got {value!r:.80}", path=path, line=line, field=name)
    if not tokens:
        raise InputError("the token list is empty", path=path, line=line, field=tokens_field)
    if len(tokens) != len(tags):
        raise InputError(f"{len(tokens)} tokens ('{tokens_field}') but {len(tags)} tags", path=path, line=line,
                         field=tags_field)
    problem = check_tags(tags, scheme)
    if problem:
        raise InputError(problem, path=path, line=line, field=tags_field)
    return line, tokens, tags


def _label_set(cfg: TaskConfig, train: list[_Record]) -> list[str]:
    """The configured labels, else the train labels sorted ('O' first for tags) for a stable id order."""
    if cfg.labels is not None:
        duplicates = sorted({lab for lab in cfg.labels if cfg.labels.count(lab) > 1})
        if duplicates:
            raise InputError(f"the task's 'labels' list repeats {', '.join(duplicates)}")
        return list(cfg.labels)
    if cfg.type == "classification":
        return _sorted({label for _, _, label in train})
    seen = {tag for _, _, tags in train for tag in tags}
    return ["O"] + _sorted(seen - {"O"})


def _sorted(labels: set[str]) -> list[str]:
    # Integer labels sort as numbers, so that 0..N keep their own value as id ("10" after "9").
    try:
        return sorted(labels, key=lambda lab: (int(lab), lab))
    except ValueError:
        return sorted(labels)


def _encode(cfg: TaskConfig, records: list[_Record], labels: list[str], path: str) -> list[Example]:
    ids = {label: i for i, label in enumerate(labels)}
    where = "one of the configured labels" if cfg.labels is not None else "in train"
    known = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
    examples: list[Example] = []
    for line, x, y in records:
        if cfg.type == "classification":
            if y not in ids:
                raise InputError(f"label '{y}' is not {where} (known: {known})", path=path, line=line,
                                 field=cfg.label_field)
            examples.append(Example(text=x, label=ids[y]))
            continue
        missing = next((tag for tag in y if tag not in ids), None)
        if missing is not None:
            field_name = "tags" if detect_format(path, cfg.format) == "conll" else cfg.tags_field
            raise InputError(f"tag '{missing}' is not {where} (known: {known})", path=path, line=line,
                             field=field_name)
        examples.append(Example(tokens=x, label=[ids[tag] for tag in y]))
    return examples


def _carve_dev(train: list[Example], fraction: float, seed: int, path: str) -> tuple[list[Example], list[Example]]:
    """Split a deterministic random `fraction` of train off as dev; both keep their original order."""
    n = len(train)
    if n < 2:
        raise InputError("train has 1 row: at least 2 are needed to carve a dev split (or give data.dev)", path=path)
    k = min(max(1, round(fraction * n)), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    dev = set(order[:k])
    return [ex for i, ex in enumerate(train) if i not in dev], [ex for i, ex in enumerate(train) if i in dev]


def load_split(cfg: TaskConfig, split: str, path: str, labels: list[str]) -> list[Example]:
    """Read one split against a fixed label set (a trained model's), e.g. for `thawing evaluate`."""
    return _encode(cfg, _read_split(cfg, split, path), labels, path)
