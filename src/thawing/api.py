"""The small Python API: load a trained run and use it.

Example:
    >>> import thawing
    >>> model = thawing.load("runs/demo-20261126-101500")            # doctest: +SKIP
    >>> model.predict(["Where is my parcel?"], task="topic")          # doctest: +SKIP
    [{'label': 'shipping', 'probs': {'account': 0.01, ...}}]
    >>> model.encode(["Where is my parcel?"]).shape                   # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from seqeval.metrics.sequence_labeling import get_entities

from thawing.data.batching import Features
from thawing.data.tasks import Example
from thawing.errors import InputError
from thawing.model.loading import load_encoder
from thawing.model.multitask import MultiTaskModel, TaskSpec
from thawing.run_dir import RunDir
from thawing.training.evaluate import score, task_logits
from thawing.training.setup import featurize


class TrainedModel:
    """A trained multi-task model: its encoder, its heads and their label sets."""

    def __init__(self, model: MultiTaskModel, run: RunDir | None = None, batch_size: int = 64):
        self.model = model.eval()
        self.run = run
        self.batch_size = batch_size

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        return self.model.specs

    @property
    def device(self) -> torch.device:
        return self.model.encoder.device

    def encode(self, texts: Sequence[str], batch_size: int = 32, prompt: str | None = None) -> np.ndarray:
        """Sentence embeddings (N, D) float32, as `SentenceTransformer(run/final/encoder)` gives them."""
        return self.model.encoder.encode(texts, batch_size=batch_size, prompt=prompt)

    def features(self, task: str, examples: list[Example], labelled: bool = False) -> Features:
        return featurize(self.model, task, examples, labelled)

    def logits(self, task: str, examples: list[Example]) -> list[np.ndarray]:
        return task_logits(self.model, task, self.features(task, examples), self.batch_size, self.device)

    def predict(self, texts: Sequence[str] | Sequence[Sequence[str]], task: str | None = None) -> dict[str, list[dict]] | list[dict]:
        """Predict every task (or one) for each input.

        Inputs are strings; token tasks split them on whitespace (or take pre-split token lists).
        Classification gives {"label", "probs"}; token classification gives {"tokens", "tags",
        "entities": [{"type", "start", "end", "text"}]} with word indices, end exclusive.
        """
        names = [task] if task else list(self.tasks)
        for name in names:
            if name not in self.tasks:
                raise InputError(f"unknown task '{name}'; this model has {', '.join(self.tasks)}")
        out = {name: self._predict_task(name, texts) for name in names}
        return out[task] if task else out

    def _predict_task(self, task: str, texts) -> list[dict]:
        spec = self.tasks[task]
        if spec.type == "classification":
            examples = [Example(text=t if isinstance(t, str) else " ".join(t)) for t in texts]
            rows = []
            for logit in self.logits(task, examples):
                probs = torch.softmax(torch.as_tensor(logit), -1).tolist()
                rows.append({"label": spec.labels[int(np.argmax(logit))], "probs": dict(zip(spec.labels, probs))})
            return rows
        examples = [Example(tokens=t.split() if isinstance(t, str) else list(t)) for t in texts]
        rows = []
        for ex, logit in zip(examples, self.logits(task, examples)):
            tags = [spec.labels[int(k)] for k in np.argmax(logit, -1)] if len(logit) else []
            tags += ["O"] * (len(ex.tokens) - len(tags))
            entities = [
                {"type": kind, "start": start, "end": end + 1, "text": " ".join(ex.tokens[start : end + 1])}
                for kind, start, end in get_entities(tags)
            ]
            rows.append({"tokens": ex.tokens, "tags": tags, "entities": entities})
        return rows

    def evaluate(self, task: str, examples: list[Example]) -> dict[str, float]:
        """Metrics of `task` on labelled examples (labels as ids of this model's label set)."""
        feats = self.features(task, examples, labelled=True)
        logits = task_logits(self.model, task, feats, self.batch_size, self.device)
        return score(self.tasks[task], logits, [e.label for e in examples])


def load(run_dir: str | Path, device: str | None = None) -> TrainedModel:
    """Load `run_dir/final` (or a `final/` folder itself) into a `TrainedModel`."""
    path = Path(run_dir)
    run = RunDir(path if (path / "final").is_dir() else path.parent)
    if not (run.final / "tasks.json").is_file():
        raise InputError("no trained model here (expected final/tasks.json)", path=path)
    specs = {t: TaskSpec(**s) for t, s in json.loads((run.final / "tasks.json").read_text()).items()}
    model = MultiTaskModel(load_encoder(str(run.encoder_dir)), specs)
    model.heads.load_state_dict(run.load_heads_state())
    if device:
        model.to(device)
    return TrainedModel(model, run)
