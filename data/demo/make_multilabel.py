"""Build the multi-label demo files from the demo splits: every message is used once, either alone (its topic as
the only label) or joined with a message of another topic from the same split (both topics). A third of each
split's messages are paired, so half of the rows carry one topic and half two. Deterministic, stdlib only.

Run from anywhere: python data/demo/make_multilabel.py
"""

from __future__ import annotations

import random

from derive import derive


def combine(messages: list[dict], rng: random.Random) -> list[dict]:
    """Rows of one split: len(messages) // 3 pairs of different topics, the other messages alone, shuffled."""
    pool = list(messages)
    rng.shuffle(pool)
    rows = []
    for _ in range(len(messages) // 3):
        first = pool.pop(0)
        # Pairs are drawn from the whole shuffled pool, so a partner of another topic is always near the front.
        second = pool.pop(next(i for i, m in enumerate(pool) if m["topic"] != first["topic"]))
        rows.append({"text": f"{first['text']} {second['text']}", "topics": [first["topic"], second["topic"]]})
    rows += [{"text": m["text"], "topics": [m["topic"]]} for m in pool]
    rng.shuffle(rows)
    return rows


def main() -> None:
    for split, rows in derive("multilabel", combine).items():
        pairs = sum(len(r["topics"]) == 2 for r in rows)
        print(f"multilabel_{split}.jsonl: {len(rows)} rows, {pairs} with two topics")


if __name__ == "__main__":
    main()
