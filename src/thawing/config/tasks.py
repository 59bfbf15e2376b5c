"""Turn a task's config into validated examples with integer labels, ready for training.

Every check that can fail on user data runs here, before any model is loaded, and `load_tasks`
reports the problems of all tasks (the first one per split file) in a single error.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from thawing.config import SPLITS, PerClassLimit, SmallDataConfig, TaskConfig
from thawing.data.readers import detect_format, read_rows
from thawing.data.records import Example, Record
from thawing.errors import InMemory, InputError

logger = logging.getLogger(__name__)

DEFAULT_DEV_FRACTION = 0.1  # a task's `dev_fraction` when it sets none (see `dev_rows`)


@dataclass
class TaskData:
    """A task's examples per split, with the label names that its ids index."""

    name: str
    type: str
    labels: list[str]
    splits: dict[str, list[Example]]


def load_task(name: str, cfg: TaskConfig, seed: int = 0, small: SmallDataConfig | None = None) -> TaskData:
    """Read, validate and label-encode one task; carve a dev split from train when none is given (its size: `dev_rows`,
    with the run's `train.small_data` settings as `small`).

    Raises:
        InputError: The first problem in each split file (several are joined into one message).
    """
    data, errors = _load(name, cfg, seed, small)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise InputError(f"task '{name}': {len(errors)} problems:\n  " + "\n  ".join(map(str, errors)))
    assert data is not None
    return data


def load_tasks(tasks: dict[str, TaskConfig], seed: int = 0, small: SmallDataConfig | None = None
               ) -> dict[str, TaskData]:
    """Load every task, so that all bad inputs are reported together before training starts (`small`: as for
    `load_task`).

    Raises:
        InputError: Listing every problem found, one per line, each prefixed with its task name.
    """
    loaded: dict[str, TaskData] = {}
    problems: list[str] = []
    for name, cfg in tasks.items():
        data, errors = _load(name, cfg, seed, small)
        problems.extend(f"{name}: {err}" for err in errors)
        if data is not None:
            loaded[name] = data
    if problems:
        raise InputError(f"{len(problems)} problem(s) in the input data:\n  " + "\n  ".join(problems))
    return loaded


def _load(name: str, cfg: TaskConfig, seed: int, small: SmallDataConfig | None
          ) -> tuple[TaskData | None, list[InputError]]:
    # Rows in memory are named by their place in the config wherever a file would be named by its path.
    paths = {split: InMemory(f"tasks.{name}.data.{split} (in memory)") if isinstance(source, list) else source
             for split in SPLITS if (source := getattr(cfg.data, split)) is not None}
    records: dict[str, list[Record]] = {}
    errors: list[InputError] = []
    for split, path in paths.items():
        try:
            records[split] = _read_split(cfg, split, path, seed)
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
    carved = " (dev carved from train)"
    if dev_from_train:
        try:
            rows = dev_rows(len(splits["train"]), cfg.dev_fraction, small)
            if cfg.dev_fraction is None and rows < round(DEFAULT_DEV_FRACTION * len(splits["train"])):
                carved = f" (dev: {rows} row(s) carved from train, as 10% would be too few to choose by)"
            splits["train"], splits["dev"] = _carve_dev(splits["train"], rows, seed, paths["train"])
        except InputError as exc:
            return None, [exc]
    try:  # last: a row's own problem is the more useful message
        _check_label_counts(cfg, labels, records.get("train"), paths.get("train"))
    except InputError as exc:
        return None, [exc]
    splits = {split: splits[split] for split in SPLITS if split in splits}
    logger.info("task %s: %s, %d labels%s", name, ", ".join(f"{len(v)} {k}" for k, v in splits.items()),
                len(labels), carved if dev_from_train else "")
    return TaskData(name=name, type=cfg.type, labels=labels, splits=splits), []


def _read_split(cfg: TaskConfig, split: str, path: str, seed: int = 0) -> list[Record]:
    fmt = detect_format(path, cfg.format)
    if isinstance(path, InMemory):
        rows = list(enumerate(getattr(cfg.data, split), start=1))  # "lines" from 1, as a JSONL copy would number them
    else:
        rows = read_rows(path, fmt, split, hf_subset=cfg.hf_subset, hf_split=cfg.hf_split.get(split))
    limit = cfg.limit.get(split)
    if isinstance(limit, int):
        rows = rows[: max(limit, 0)]
    if not rows:
        limited = f" (after limit {limit})" if limit is not None else ""
        raise InputError(f"{split} split is empty{limited}", path=path)
    records = _kind(cfg).read_split(cfg, path, fmt, rows)
    if isinstance(limit, PerClassLimit):  # after reading: every row was checked, and its label is known
        records = draw_per_class(records, limit.per_class, seed)
    return records


def draw_per_class(records: list[Record], per_class: int, seed: int) -> list[Record]:
    """`per_class` records of each label, drawn with `random.Random(seed)`, in file order. Each label draws from its
    own generator (seeded by the seed and the label), so one class's draw does not depend on the others' sizes."""
    by_label: dict[str, list[int]] = {}
    for i, (_, _, label) in enumerate(records):
        by_label.setdefault(label, []).append(i)
    keep: set[int] = set()
    for label, members in by_label.items():
        rng = random.Random(f"{seed}:{label}")
        keep.update(members if len(members) <= per_class else rng.sample(members, per_class))
    return [record for i, record in enumerate(records) if i in keep]


def _label_set(cfg: TaskConfig, train: list[Record]) -> list[str]:
    """The configured labels (a similarity task's score range), else the train labels in the task type's order."""
    if cfg.score_range is not None:
        return [repr(float(x)) for x in cfg.score_range]
    if cfg.labels is not None:
        duplicates = sorted({lab for lab in cfg.labels if cfg.labels.count(lab) > 1})
        if duplicates:
            raise InputError(f"the task's 'labels' list repeats {', '.join(duplicates)}")
        return list(cfg.labels)
    return _kind(cfg).label_set(train)


def _check_label_counts(cfg: TaskConfig, labels: list[str], train: list[Record] | None, path: str | None) -> None:
    """The label set, and train, must hold the type's minimum of distinct labels: a classifier trained on a single
    class learns nothing and scores as if it had."""
    kind = _kind(cfg)
    if cfg.labels is not None and len(labels) < kind.min_labels:
        raise InputError(f"the task's 'labels' list has {len(labels)}: a {kind.name} task needs at least "
                         f"{kind.min_labels}")
    seen = kind.label_set(train) if train is not None else labels
    if len(seen) < kind.min_labels:
        limited = f" (after limit {cfg.limit['train']})" if "train" in cfg.limit else ""
        raise InputError(f"train has {len(seen)} distinct label(s){limited} ({', '.join(seen)}): a {kind.name} task "
                         f"needs at least {kind.min_labels}", path=path)


def _encode(cfg: TaskConfig, records: list[Record], labels: list[str], path: str) -> list[Example]:
    ids = {label: i for i, label in enumerate(labels)}
    where = "one of the configured labels" if cfg.labels is not None else "in train"
    known = f"{where} (known: " + ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "") + ")"
    kind = _kind(cfg)
    return [kind.example(cfg, record, ids, path, known) for record in records]


def _kind(cfg: TaskConfig):
    # Imported here: the task types use this package's batching and records, so a module-level import would be a
    # cycle through thawing/data/__init__.py.
    from thawing.task_types import task_type

    return task_type(cfg.type)


def dev_rows(n: int, fraction: float | None, small: SmallDataConfig | None) -> int:
    """How many of `n` train rows a dev carve takes: `fraction` of them when the task sets one; by default 10%, but
    where 10% is fewer than `small.min_dev` (a dev split too small to choose by: training/small_data.py) only
    `small.dev_rows`, as every example is worth more in training then. At least 1, and at least 1 left to train.

    Example:
        >>> small = SmallDataConfig()
        >>> dev_rows(48, None, small), dev_rows(48, 0.1, small), dev_rows(1000, None, small), dev_rows(48, None, None)
        (1, 5, 100, 5)
    """
    k = round((fraction or DEFAULT_DEV_FRACTION) * n)
    if fraction is None and small is not None and k < small.min_dev:
        k = small.dev_rows
    return min(max(1, k), n - 1)


def _carve_dev(train: list[Example], k: int, seed: int, path: str) -> tuple[list[Example], list[Example]]:
    """Split `k` deterministic random examples of train off as dev; both keep their original order."""
    n = len(train)
    if n < 2:
        raise InputError("train has 1 row: at least 2 are needed to carve a dev split (or give data.dev)", path=path)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    dev = set(order[:k])
    return [ex for i, ex in enumerate(train) if i not in dev], [ex for i, ex in enumerate(train) if i in dev]


def load_split(cfg: TaskConfig, split: str, path: str, labels: list[str]) -> list[Example]:
    """Read one split against a fixed label set (a trained model's), e.g. for `thawing evaluate`."""
    return _encode(cfg, _read_split(cfg, split, path), labels, path)
