"""What the demo's derived files share (make_pairs.py, make_multilabel.py): each demo split's messages read, turned
into rows by the script's own rule, and written beside them. Deterministic, stdlib only."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPLITS = ("train", "dev", "test")


def derive(prefix: str, build: Callable[[list[dict], random.Random], list[dict]]) -> dict[str, list[dict]]:
    """For each split, `build` of its messages (with a fresh `random.Random(0)`), written to `<prefix>_<split>.jsonl`
    in this folder; returns split -> rows."""
    out = {}
    for split in SPLITS:
        lines = (HERE / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        rows = build([json.loads(line) for line in lines if line.strip()], random.Random(0))
        path = HERE / f"{prefix}_{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        out[split] = rows
    return out
