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

from thawing import inference
from thawing.data.records import Example
from thawing.errors import InputError
from thawing.model.loading import load_encoder
from thawing.model.multitask import MultiTaskModel, TaskSpec
from thawing.run_dir import RunDir
from thawing.runtime import Runtime, apply, resolve


class TrainedModel:
    """A trained multi-task model: its encoder, its heads and their label sets, on a resolved runtime (device,
    precision, packing)."""

    def __init__(self, model: MultiTaskModel, runtime: Runtime, run: RunDir | None = None, batch_size: int = 64):
        self.model = model.eval()
        self.runtime = runtime
        self.run = run
        self.batch_size = batch_size

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        return self.model.specs

    def encode(self, texts: Sequence[str], batch_size: int = 32, prompt: str | None = None) -> np.ndarray:
        """Sentence embeddings (N, D) float32, as `SentenceTransformer(run/final/encoder)` gives them (in fp32)."""
        with self.runtime.autocast():
            return self.model.encoder.encode(texts, batch_size=batch_size, prompt=prompt,
                                             max_tokens=self.runtime.inference_max_tokens)

    def logits(self, task: str, examples: list[Example]) -> list[np.ndarray]:
        feats = inference.featurize(self.model, task, examples, labelled=False)
        with self.runtime.autocast():
            return inference.task_logits(self.model, task, feats, self.batch_size, self.runtime.inference_max_tokens)

    def predict(self, texts: Sequence[str] | Sequence[Sequence[str]], task: str | None = None
                ) -> dict[str, list[dict]] | list[dict]:
        """Predict every task (or one) for each input, running the encoder once for the tasks that read the same
        inputs.

        Inputs are strings; token tasks split them on whitespace (or take pre-split token lists).
        Classification gives {"label", "probs"}; token classification gives {"tokens", "tags",
        "entities": [{"type", "start", "end", "text"}]} with word indices, end exclusive.
        """
        names = [task] if task else list(self.tasks)
        for name in names:
            if name not in self.tasks:
                raise InputError(f"unknown task '{name}'; this model has {', '.join(self.tasks)}")
        with self.runtime.autocast():
            out = inference.predict(self.model, texts, names, self.batch_size, self.runtime.inference_max_tokens)
        return out[task] if task else out

    def evaluate(self, task: str, examples: list[Example]) -> dict[str, float]:
        """Metrics of `task` on labelled examples (labels as ids of this model's label set)."""
        feats = inference.featurize(self.model, task, examples, labelled=True)
        with self.runtime.autocast():
            logits = inference.task_logits(self.model, task, feats, self.batch_size, self.runtime.inference_max_tokens)
        return inference.score(self.tasks[task], logits, [e.label for e in examples])


def load(run_dir: str | Path, device: str = "auto", mixed_precision: str = "auto", packing: bool | None = None
         ) -> TrainedModel:
    """Load `run_dir/final` (or a `final/` folder itself) into a `TrainedModel`, on a runtime resolved as for
    `thawing embed` (auto: a GPU in bf16 with varlen packing where there is one; CPU in fp32 otherwise)."""
    run = RunDir.of_model(run_dir)
    if not run.tasks.is_file():
        raise InputError("no trained model here (expected final/tasks.json)", path=Path(run_dir))
    specs = {t: TaskSpec(**s) for t, s in json.loads(run.tasks.read_text()).items()}
    encoder = load_encoder(str(run.encoder_dir))
    model = MultiTaskModel(encoder, specs)
    model.heads.load_state_dict(run.load_heads_state())

    def sample():
        ids = encoder.pad(encoder.token_ids(["a sentence to check packing with.", "and another one"]))
        return ids["input_ids"], ids["attention_mask"]

    runtime = resolve(encoder, device=device, precision=mixed_precision, packing_=packing, training=False,
                      sample=sample)
    model.to(runtime.device)
    apply(runtime, encoder)
    return TrainedModel(model, runtime, run)
