"""Pair classification (NLI-style): two sentences and one label, a head over (u, v, |u - v|) of their sentence
embeddings as in Sentence-BERT (and u * v with `head.product`), cross-entropy, accuracy and macro-F1 (scikit-learn),
as for classification."""

from __future__ import annotations

from collections.abc import Sequence

from thawing.data.records import Example, Record, check_label_kinds, field_value
from thawing.errors import InputError
from thawing.task_types.pair import PairTask, read_texts


class PairClassification(PairTask):
    name = "pair-classification"
    primary_metric = "accuracy"
    min_labels = 2
    metric_names = ("accuracy", "macro_f1")
    hub_task = "text-classification"
    has_head = True

    def read_split(self, cfg, path: str, fmt: str, rows: Sequence[tuple[int, dict]]) -> list[Record]:
        records = [self.read(cfg, path, fmt, line, record) for line, record in rows]
        check_label_kinds(((line, record.get(cfg.label_field)) for line, record in rows), path, cfg.label_field)
        return records

    def read(self, cfg, path: str, fmt: str, line: int, record: dict) -> Record:  # noqa: ARG002 (the interface)
        texts = read_texts(record, self.text_fields(cfg), path, line)
        return line, texts, self.read_label(cfg, path, line, field_value(record, cfg.label_field, path, line))

    def example(self, cfg, record: Record, ids: dict[str, int], path: str, known: str) -> Example:
        line, texts, label = record
        if label not in ids:
            raise InputError(f"label '{label}' is not {known}", path=path, line=line, field=cfg.label_field)
        return Example(texts=texts, label=ids[label])

    def build_head(self, in_features: int, spec, cfg):
        from thawing.task_types.heads import PairHead

        return PairHead(in_features, len(spec.labels), cfg, product=bool(spec.head.get("product")))

    def centroid_head(self, head, features, labels) -> None:
        """Nearest class centroids over the head's input, (u, v, |u - v|): a classifier with no gradient step."""
        from thawing.task_types.heads import centroid_init

        keep = labels >= 0
        centroid_init(head, head.combine(features[keep]), labels[keep])
