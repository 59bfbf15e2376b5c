"""Resume is a contract: a resumed run trains with the config it was started with. The config as the run reads it
back from config.yaml is recorded when the run starts (config_record.json); a resume compares config.yaml with it and
refuses any edit, naming each changed key with its old and new value. Keys that cannot change what is trained may be
changed on purpose (`thawing train --resume RUN --allow-config-change train.log_every`); the change is recorded.
"""

from __future__ import annotations

import json
from typing import Any

from thawing.errors import InputError

# Keys a resume may change: what is logged, where, how often a checkpoint is taken, whether checkpoints are kept.
CHANGEABLE = ("train.log_every", "train.report_to", "train.checkpoint_every", "train.keep_checkpoints", "cache.dir")


def flat(config: dict, prefix: str = "") -> dict[str, Any]:
    """A config as dotted keys (a.b.c); lists stay values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def changes(before: dict, after: dict) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs, with its values before and after (None: absent)."""
    a, b = flat(before), flat(after)
    return {key: (a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)}


def start(run, config) -> None:
    """Record the config a new run trains with, as a resume will read it back."""
    run.write_json(run.config_record, {"config": config.model_dump(mode="json"), "changes": []})


def check(run, config, allow: tuple[str, ...] | list[str], step: int) -> None:
    """Refuse a resume whose config.yaml differs from the run's record, except in the `allow`ed keys (each one of
    `CHANGEABLE`), which are then recorded. A run started before the record existed is not checked.

    Raises:
        InputError: naming config.yaml, each changed key with both values, and how to allow a changeable one.
    """
    unknown = [key for key in allow if key not in CHANGEABLE]
    if unknown:
        raise InputError(f"--allow-config-change {unknown[0]}: only {', '.join(CHANGEABLE)} may change on a resume "
                         "(the others change what is trained: start a new run)")
    if not run.config_record.is_file():
        return
    record, current = run.read_json(run.config_record), config.model_dump(mode="json")
    changed = changes(record["config"], current)
    refused = {key: values for key, values in changed.items() if key not in allow}
    if refused:
        lines = "; ".join(f"{key}: {_show(a)} -> {_show(b)}" for key, (a, b) in refused.items())
        hint = ("" if not set(refused) <= set(CHANGEABLE)
                else f" (or pass --allow-config-change {' '.join(refused)} to change them on purpose)")
        raise InputError(f"config.yaml was edited since the run started ({lines}); a resumed run trains with the "
                         f"config it started with: put it back{hint}", path=run.config)
    if changed:
        record["config"] = current
        record["changes"].append({"step": step, "changed": {key: list(v) for key, v in changed.items()}})
        run.write_json(run.config_record, record)


def _show(value: Any) -> str:
    return json.dumps(value)
