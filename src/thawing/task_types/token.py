"""Token classification (NER): one tag per word, a head over token states read at each word's first sub-token,
cross-entropy, entity precision, recall and F1 (seqeval, conlleval mode)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from thawing.data.batching import Features, featurize_words
from thawing.data.readers import detect_format
from thawing.data.records import Example, Record, field_value, sorted_labels
from thawing.data.tags import check_tags
from thawing.errors import InputError
from thawing.task_types.classification import Classification


class TokenClassification(Classification):
    name = "token-classification"
    reads = "tokens"  # the head reads every token's state; words are labelled on their first sub-token
    primary_metric = "f1"
    min_labels = 2  # 'O' and at least one entity tag
    metric_names = ("precision", "recall", "f1", "accuracy")
    hub_task = "token-classification"
    pairs = False  # no pair loss: not one label per sentence

    # ------------------------------------------------------------------ data
    def read_split(self, cfg, path: str, fmt: str, rows: Sequence[tuple[int, dict]]) -> list[Record]:
        return [self.read(cfg, path, fmt, line, record) for line, record in rows]  # tags are checked as strings

    def read(self, cfg, path: str, fmt: str, line: int, record: dict) -> Record:
        # CoNLL files have no field names: the reader always produces tokens/tags.
        tokens_field, tags_field = ("tokens", "tags") if fmt == "conll" else (cfg.tokens_field, cfg.tags_field)
        tokens = field_value(record, tokens_field, path, line)
        tags = field_value(record, tags_field, path, line)
        for name, value in ((tokens_field, tokens), (tags_field, tags)):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InputError(f"expected a list of strings, got {value!r:.80}", path=path, line=line, field=name)
        if not tokens:
            raise InputError("the token list is empty", path=path, line=line, field=tokens_field)
        if len(tokens) != len(tags):
            raise InputError(f"{len(tokens)} tokens ('{tokens_field}') but {len(tags)} tags", path=path, line=line,
                             field=tags_field)
        problem = check_tags(tags, cfg.tag_scheme)
        if problem:
            raise InputError(problem, path=path, line=line, field=tags_field)
        return line, tokens, tags

    def label_set(self, records: Sequence[Record]) -> list[str]:
        """'O' first, then the other tags sorted."""
        return ["O"] + sorted_labels({tag for _, _, tags in records for tag in tags} - {"O"})

    def example(self, cfg, record: Record, ids: dict[str, int], path: str, known: str) -> Example:
        line, tokens, tags = record
        missing = next((tag for tag in tags if tag not in ids), None)
        if missing is not None:
            field = "tags" if detect_format(path, cfg.format) == "conll" else cfg.tags_field
            raise InputError(f"tag '{missing}' is not {known}", path=path, line=line, field=field)
        return Example(tokens=tokens, label=[ids[tag] for tag in tags])

    def example_for_prediction(self, item: str | Sequence[str]) -> Example:
        return Example(tokens=item.split() if isinstance(item, str) else list(item))

    def label_ids(self, gold: Any, ids: dict[str, int]) -> Any:
        """One tag per word."""
        return [ids[str(tag)] for tag in gold]

    # ------------------------------------------------------------------ model
    def featurize(self, encoder, examples: Sequence[Example], labelled: bool, prompt: str | None) -> Features:
        tags = [e.label for e in examples] if labelled else None
        return featurize_words(encoder, [e.tokens for e in examples], tags, prompt)

    def gather(
        self, logits: np.ndarray, feats: Features, indices: Sequence[int], left_padded: bool
    ) -> list[np.ndarray]:
        """A batch's logits (B, T, C) -> one (words, C) array per example, read at each word's first sub-token."""
        width = logits.shape[1]
        return [logits[row, word_positions(feats, i, width, left_padded)] for row, i in enumerate(indices)]

    # ------------------------------------------------------------------ results
    def decision_rule(self, spec) -> dict:
        """Softmax and argmax at each word's first sub-token (the prompt's words carry no tag)."""
        return {"activation": "softmax", "rule": "argmax at each word's first sub-token", "tag_scheme": spec.tag_scheme}

    def metrics(self, spec, logits: Sequence[np.ndarray], gold: Sequence) -> dict[str, float]:
        from thawing.task_types.metrics import token_metrics

        true_tags, pred_tags = [], []
        for words, tags in zip(logits, gold, strict=True):
            # Words cut off by max_length were never seen: they count as "O" (a miss), never dropped.
            pred_tags.append(self.tags(spec, words, len(tags)))
            true_tags.append([spec.labels[t] for t in tags])
        return token_metrics(true_tags, pred_tags, spec.tag_scheme)

    def tags(self, spec, logits: np.ndarray, words: int) -> list[str]:
        """A tag per word; words past what the model saw are "O"."""
        predicted = [spec.labels[int(k)] for k in np.argmax(logits, axis=-1)] if len(logits) else []
        return predicted + ["O"] * (words - len(predicted))

    def predict(self, spec, logits: np.ndarray, example: Example) -> dict:
        from seqeval.metrics.sequence_labeling import get_entities

        tokens: list[Any] = example.tokens or []
        tags = self.tags(spec, logits, len(tokens))
        entities = [
            {"type": kind, "start": start, "end": end + 1, "text": " ".join(tokens[start : end + 1])}
            for kind, start, end in get_entities(tags)
        ]
        return {"tokens": tokens, "tags": tags, "entities": entities}


def word_positions(feats: Features, i: int, width: int, left_padded: bool) -> list[int]:
    """Where example i's words start in a batch padded to `width`."""
    shift = width - len(feats.input_ids[i]) if left_padded else 0
    return [p + shift for p in feats.word_starts[i]]
