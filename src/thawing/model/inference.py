"""Inference with a multi-task model, for training's evaluations and for `evaluate`, `predict` and `thawing.load`
alike: featurizing examples for a task, logits per example, metrics, predictions, and the examples of a split as
training saw them (a carved dev split carved again).

Prediction runs the encoder once for every group of tasks that read the same inputs (the same tokenization and
prompt) and applies each of their heads to that one pass.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from thawing.config import RunConfig
from thawing.data.batching import Features, collate, sorted_batches
from thawing.data.records import Example
from thawing.distributed import map_batches
from thawing.model.encoder import evaluating
from thawing.model.multitask import MultiTaskModel, TaskSpec, flat


def featurize(model: MultiTaskModel, task: str, examples: Sequence[Example], labelled: bool = True) -> Features:
    """Tokenize one split of a task with the encoder's tokenizer and the task's prompt."""
    spec = model.specs[task]
    return spec.kind.featurize(model.encoder, examples, labelled, spec.prompt)


@torch.no_grad()
def logits_by_task(model: MultiTaskModel, tasks: Sequence[str], feats: Features, batch_size: int,
                   max_tokens: int | None = None, label: str | None = None) -> dict[str, list[np.ndarray]]:
    """Logits per example for several tasks that read the same `feats`, from one encoder pass per batch: (C,) for
    sentence tasks, (words, C) for token tasks, in input order. Batches hold `batch_size` examples, or fill
    `max_tokens` padded tokens (the runtime's inference budget on a GPU)."""
    out: dict[str, list] = {task: [None] * len(feats) for task in tasks}
    device = model.encoder.device
    left = model.encoder.tokenizer.padding_side == "left"
    readers = {model.specs[t].kind.reads for t in tasks}

    def compute(idx: list[int]) -> dict[str, list]:
        batch = collate(model.encoder, feats, idx)
        ids, mask, sides = flat(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        states = model.encoder.token_states(ids, mask)
        inputs = {reads: model.read(next(t for t in tasks if model.specs[t].kind.reads == reads), states, mask, sides)
                  for reads in readers}
        rows = {}
        for task in tasks:
            kind = model.specs[task].kind
            logits = model.heads[task](inputs[kind.reads]).float().cpu().numpy()
            rows[task] = list(kind.gather(logits, feats, idx, left))
        return rows

    with evaluating(model):  # with several processes, each runs its share of the batches and all get every row
        for idx, rows in map_batches(sorted_batches(feats.lengths, batch_size, max_tokens), compute,
                                     label or "Predicting"):
            for task in tasks:
                for i, row in zip(idx, rows[task], strict=True):
                    out[task][i] = row
    return out


def task_logits(model: MultiTaskModel, task: str, feats: Features, batch_size: int,
                max_tokens: int | None = None) -> list[np.ndarray]:
    """Logits per example of one task (see `logits_by_task`)."""
    return logits_by_task(model, [task], feats, batch_size, max_tokens, f"Evaluating {task}")[task]


def score(spec: TaskSpec, logits: Sequence[np.ndarray], gold: Sequence) -> dict[str, float]:
    """The task type's metrics: e.g. accuracy and macro-F1, or entity precision, recall and F1."""
    return spec.kind.metrics(spec, logits, gold)


def input_groups(model: MultiTaskModel, tasks: Sequence[str]) -> list[list[str]]:
    """Tasks that read the same inputs (featurizer and prompt), so that one encoder pass serves each group."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for task in tasks:
        spec = model.specs[task]
        groups[(type(spec.kind).featurize, spec.prompt)].append(task)
    return list(groups.values())


def predict(model: MultiTaskModel, items: Sequence[str] | Sequence[Sequence[str]], tasks: Sequence[str],
            batch_size: int = 64, max_tokens: int | None = None) -> dict[str, list[dict]]:
    """Predictions of every task in `tasks` for each input (a text; token tasks split it on whitespace, or take a
    word list), in the shape of each task's type."""
    out: dict[str, list[dict]] = {}
    for group in input_groups(model, tasks):
        kind = model.specs[group[0]].kind
        examples = [kind.example_for_prediction(item) for item in items]
        feats = featurize(model, group[0], examples, labelled=False)
        logits = logits_by_task(model, group, feats, batch_size, max_tokens)
        for task in group:
            spec = model.specs[task]
            out[task] = [spec.kind.predict(spec, x, ex) for x, ex in zip(logits[task], examples, strict=True)]
    return {task: out[task] for task in tasks}


def split_examples(config: RunConfig, task: str, labels: list[str], split: str, path: str | None = None
                   ) -> list[Example] | None:
    """The labelled examples of a task's `split` with a trained model's label ids: from `path`, or from the run's own
    data, with a dev split carved from train carved again exactly as in training (the same seed). None when the
    task has no such split."""
    from thawing.config.tasks import load_split, load_task
    from thawing.task_types import task_type

    task_cfg = config.tasks[task].model_copy(update=task_type(config.tasks[task].type).fixed_labels(labels))
    if path is not None:
        return load_split(task_cfg, split, path, labels)
    return load_task(task, task_cfg, seed=config.train.seed, small=config.train.small_data).splits.get(split)


def file_examples(spec: TaskSpec, split: str, path: str) -> list[Example]:
    """The labelled examples in `path` for a model without its run (a Hugging Face download has no config.yaml): the
    fields are the task type's defaults (text and label; tokens and tags), as no config names others."""
    from thawing.config import TaskConfig
    from thawing.config.tasks import load_split

    task_cfg = TaskConfig(type=spec.type, data={"train": path}, tag_scheme=spec.tag_scheme,
                          **spec.kind.fixed_labels(list(spec.labels)))
    return load_split(task_cfg, split, path, list(spec.labels))
