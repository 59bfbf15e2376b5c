"""Retention probes: what training keeps of the pretrained encoder, measured on data it never trains on.

    similarity  Spearman correlation of the cosine similarity of sentence pairs with their gold score (STS-B)
    transfer    accuracy of a logistic regression (scikit-learn) fitted on the encoder's frozen embeddings of a task
                that is not trained, on its own test split (carved deterministically when there is none): the
                MTEB classification protocol
    drift       1 - mean cosine between the pretrained encoder's embeddings and the current encoder's on a fixed
                text set, and the relative change of each layer group's weight norm

Each probe point encodes each probe's texts once. The pretrained side (its embeddings, values and weight norms) is
computed once, before training (and again, from the freshly loaded model, when a run resumes), so retention is the
current value over the pretrained one. A frozen encoder gives exactly zero drift and unchanged values.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from thawing.config import ProbeConfig
from thawing.data.readers import read_rows
from thawing.data.records import field_value
from thawing.errors import InputError


@dataclass
class Probe:
    name: str
    type: str
    texts: list[str]  # every text the probe encodes, once per point
    gold: np.ndarray  # similarity: scores; transfer: labels (train rows first)
    pairs: int = 0  # similarity: texts[:pairs] are the first sentences, texts[pairs:] the second
    n_train: int = 0  # transfer: texts[:n_train] fit the probe, the rest score it


def load_probe(name: str, cfg: ProbeConfig) -> Probe:
    """Read a probe's data (errors name the file, line and field)."""
    # a per-split limit may name one split: the other is read whole
    limit = {**{"train": None, "test": None}, **cfg.limit} if isinstance(cfg.limit, dict) else {
        "train": cfg.limit, "test": cfg.limit}
    if cfg.type == "similarity":
        rows = _rows(cfg.data, limit["train"])
        first = [str(field_value(r, cfg.sentence1_field, cfg.data, line)) for line, r in rows]
        second = [str(field_value(r, cfg.sentence2_field, cfg.data, line)) for line, r in rows]
        scores = [_number(field_value(r, cfg.score_field, cfg.data, line), cfg.data, line, cfg.score_field)
                  for line, r in rows]
        return Probe(name, cfg.type, first + second, np.asarray(scores, dtype=np.float64), pairs=len(rows))
    if cfg.type == "drift":
        rows = _rows(cfg.data, limit["train"])
        return Probe(name, cfg.type, [str(field_value(r, cfg.text_field, cfg.data, line)) for line, r in rows],
                     np.zeros(0))
    train_path = cfg.data if isinstance(cfg.data, str) else cfg.data.train
    test_path = None if isinstance(cfg.data, str) else cfg.data.test
    train = [(str(field_value(r, cfg.text_field, train_path, line)), str(field_value(r, cfg.label_field, train_path,
                                                                                    line))) for line, r in
             _rows(train_path, limit["train"] if test_path else None)]
    if test_path:
        test = [(str(field_value(r, cfg.text_field, test_path, line)), str(field_value(r, cfg.label_field, test_path,
                                                                                      line))) for line, r in
                _rows(test_path, limit["test"])]
    else:  # a fixed carve: each row's side depends on its text only, whatever the seed or the limit
        code = [zlib.crc32(text.encode()) for text, _ in train]
        cut = cfg.test_fraction * 1000
        # A limit keeps rows in the order of another part of that hash, not the file's first rows: such files (SUBJ,
        # MR) are often sorted by label.
        order = sorted(range(len(train)), key=lambda i: code[i] // 1000)
        test = [train[i] for i in order if code[i] % 1000 < cut][: limit["test"]]
        train = [train[i] for i in order if code[i] % 1000 >= cut][: limit["train"]]
    labels = sorted({y for _, y in train})
    if len(labels) < 2:
        raise InputError(f"probe '{name}' needs at least two labels in its training rows", path=train_path)
    ids = {y: i for i, y in enumerate(labels)}
    gold = [ids.get(y, -1) for _, y in train + test]  # a test label unseen in train can never be predicted
    return Probe(name, cfg.type, [t for t, _ in train + test], np.asarray(gold), n_train=len(train))


def _rows(path: str, limit: int | None) -> list:
    rows = read_rows(path)
    return rows[:limit] if limit else rows


def _number(value, path: str, line: int, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number):
        raise InputError(f"not a finite number: {value!r}", path=path, line=line, field=name)
    return number


@dataclass
class Probes:
    """The run's probes with their pretrained side; `measure(encoder)` gives every probe's values at one point."""

    probes: list[Probe]
    encode: object  # texts -> (N, D) float32 embeddings with the current encoder, as the run's runtime encodes
    reference: dict[str, np.ndarray] = field(default_factory=dict)  # drift: the pretrained embeddings
    norms: dict[str, float] = field(default_factory=dict)  # pretrained weight norm of each encoder group
    pretrained: dict[str, dict] = field(default_factory=dict)  # each probe's values before training
    seconds: float = 0.0  # time spent probing

    def start(self, groups: dict) -> dict[str, dict]:
        """The pretrained side: run once on the untrained encoder."""
        began = time.perf_counter()
        self.norms = group_norms(groups)
        for probe in self.probes:
            if probe.type == "drift":
                self.reference[probe.name] = self.encode(probe.texts)
        self.pretrained = self._values(groups, None)
        self.seconds += time.perf_counter() - began
        return self.pretrained

    def measure(self, groups: dict) -> dict[str, dict]:
        """Every probe's values for the encoder as it is now, with retention against the pretrained values."""
        began = time.perf_counter()
        values = self._values(groups, self.pretrained)
        self.seconds += time.perf_counter() - began
        return values

    def _values(self, groups: dict, pretrained: dict | None) -> dict[str, dict]:
        out = {}
        for probe in self.probes:
            vectors = self.encode(probe.texts)
            if probe.type == "similarity":
                value = {"spearman": similarity(vectors[: probe.pairs], vectors[probe.pairs :], probe.gold)}
            elif probe.type == "transfer":
                value = {"accuracy": transfer(vectors, probe.gold, probe.n_train)}
            else:
                value = {"drift": drift(self.reference[probe.name], vectors),
                         "weight_norm_change": norm_change(self.norms, group_norms(groups))}
            metric = next(iter(value))
            if probe.type != "drift" and pretrained is not None:
                before = pretrained[probe.name][metric]
                value[f"{metric}_retention"] = value[metric] / before if before else None
            out[probe.name] = value
        return out

    def final(self, values: dict[str, dict]) -> dict[str, dict]:
        """The values for results.json: the last point's, with the pretrained values beside them."""
        return {name: {**value, **{f"pretrained_{k}": v for k, v in self.pretrained[name].items()
                                   if k != "weight_norm_change"}} for name, value in values.items()}


def similarity(first: np.ndarray, second: np.ndarray, gold: np.ndarray) -> float:
    from scipy.stats import spearmanr

    cosine = _cosine(first, second)
    rho = spearmanr(cosine, gold).statistic
    return float(rho) if np.isfinite(rho) else 0.0  # constant similarities rank nothing: no correlation


def transfer(vectors: np.ndarray, labels: np.ndarray, n_train: int) -> float:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=1000)  # deterministic (lbfgs): the same embeddings give the same accuracy
    model.fit(vectors[:n_train], labels[:n_train])
    return float((model.predict(vectors[n_train:]) == labels[n_train:]).mean())


def drift(before: np.ndarray, after: np.ndarray) -> float:
    """1 - mean cosine of each text's two embeddings; exactly 0 for identical ones."""
    return float(1.0 - _cosine(before, after).mean())


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    # sqrt(x * x) == x in IEEE arithmetic, so a vector's cosine with itself is exactly 1.
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def group_norms(groups: dict) -> dict[str, float]:
    """The L2 norm of each encoder group's weights (heads are not the encoder's)."""
    import torch

    return {g: float(torch.sqrt(sum((p.detach().double() ** 2).sum() for _, p in members)))
            for g, members in groups.items() if members and not g.startswith("head:")}


def norm_change(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {g: (after[g] - v) / v if v else 0.0 for g, v in before.items()}


def build_probes(config, encoder, runtime) -> Probes | None:
    """The config's probes with their data read, encoding as the run's runtime does; None without probes."""
    if not config.probes:
        return None

    def encode(texts: list[str]) -> np.ndarray:
        with runtime.autocast():
            return encoder.encode(texts, batch_size=config.train.eval_batch_size,
                                  max_tokens=runtime.inference_max_tokens)

    return Probes([load_probe(name, cfg) for name, cfg in config.probes.items()], encode)
