"""What the sentence-pair types share (similarity, pair classification, retrieval): each example holds several texts
(two sentences; a query, its positive and maybe a hard negative), read from named fields, tokenized each on its own
and embedded by the shared encoder, the example's embeddings stacked as (S, D) for what the type puts on top.

The texts of an example travel together: `Features.input_ids` holds the first, `Features.others` the rest, and a batch
comes as (B, S, T) token ids (data/batching.py), which the model flattens, encodes and pools back to (B, S, D)
(model/multitask.py). A frozen encoder caches those (N, S, D) embeddings like any sentence task's, each distinct text
encoded once (training/features.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from thawing.data.batching import Features, featurize_pairs
from thawing.data.records import Example, field_value
from thawing.errors import InputError
from thawing.task_types.classification import Classification


def read_texts(record: dict, fields: Sequence[str], path: str, line: int) -> list[str]:
    """The non-empty string in each of `fields`, or an error naming the file, line and field."""
    out = []
    for name in fields:
        text = field_value(record, name, path, line)
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"expected a non-empty string, got {text!r:.80}", path=path, line=line, field=name)
        out.append(text)
    return out


def pair_item(item: Any, names: Sequence[str]) -> list[str]:
    """The texts of one input for prediction: a list of texts, or an object with the type's field names.

    Raises:
        InputError: for anything else, saying what a pair input looks like.
    """
    if isinstance(item, Mapping):
        texts = [item.get(name) for name in names]
    elif isinstance(item, (list, tuple)):
        texts = list(item)
    else:
        texts = [item]
    if len(texts) != len(names) or not all(isinstance(t, str) and t.strip() for t in texts):
        raise InputError(f"a pair task takes {len(names)} texts per input: a list [{', '.join(names)}] or an object "
                         f"with the fields {', '.join(names)}; got {item!r:.80}")
    return [str(t) for t in texts]


class PairTask(Classification):
    """The members the pair types share; each type sets its fields, label, loss, metrics and predictions."""

    reads = "pairs"  # the head reads the stacked sentence embeddings of each example's texts (B, S, D)
    pairs = False  # SetFit's pair loss reads one label per sentence
    has_head = False  # a head of its own (pair classification); otherwise only the encoder (and projection) trains
    inputs: tuple[str, ...] = ("sentence1", "sentence2")  # the names of an input's texts, for prediction

    def text_fields(self, cfg) -> list[str]:
        return [cfg.sentence1_field, cfg.sentence2_field]

    def example_for_prediction(self, item: Any) -> Example:
        return Example(texts=pair_item(item, self.inputs))

    def featurize(self, encoder, examples: Sequence[Example], labelled: bool, prompt: str | None) -> Features:
        labels = [e.label for e in examples] if labelled else None
        return featurize_pairs(encoder, [e.texts or [] for e in examples], labels, prompt)

    def gather(self, logits: np.ndarray, feats: Features, indices: Sequence[int], left_padded: bool  # noqa: ARG002
               ) -> list[np.ndarray]:
        """A batch's outputs -> one array per example."""
        return [logits[row] for row in range(len(indices))]

    def centroid_head(self, head, features, labels) -> None:  # noqa: ARG002 (the task-type interface)
        """No head to start: nothing to do."""
