"""Build the sentence-pair demo files from the demo splits: each message paired once with a message of the same topic
and once with a message of another topic, both drawn from its own split, scored by what the two share: 3 the topic
and the sentiment, 2 the topic, 1 the sentiment, 0 neither. A stand-in for a human similarity rating (as in STS-B),
for trying the `similarity` task type on the demo data. Deterministic, stdlib only.

Run from anywhere: python data/demo/make_pairs.py
"""

from __future__ import annotations

import random

from derive import derive


def score(a: dict, b: dict) -> int:
    return 2 * (a["topic"] == b["topic"]) + (a["sentiment"] == b["sentiment"])


def pairs(messages: list[dict], rng: random.Random) -> list[dict]:
    """Two pairs per message: a partner of the same topic (another message), and one of another topic."""
    rows = []
    for i, first in enumerate(messages):
        same = [m for j, m in enumerate(messages) if j != i and m["topic"] == first["topic"]]
        other = [m for m in messages if m["topic"] != first["topic"]]
        for partner in (rng.choice(same), rng.choice(other)):
            rows.append({"sentence1": first["text"], "sentence2": partner["text"], "score": score(first, partner)})
    rng.shuffle(rows)
    return rows


def main() -> None:
    for split, rows in derive("pairs", pairs).items():
        print(f"pairs_{split}.jsonl: {len(rows)} pairs")


if __name__ == "__main__":
    main()
