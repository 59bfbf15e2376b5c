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

import logging
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thawing import distributed
from thawing.config import RunConfig
from thawing.data.records import Example
from thawing.errors import InputError
from thawing.model import inference
from thawing.model.loading import load_encoder
from thawing.model.multitask import MultiTaskModel, TaskSpec
from thawing.model.runtime import Runtime, apply, resolve
from thawing.store.run_dir import RunDir
from thawing.training.events import Callback

log = logging.getLogger(__name__)

class TrainedModel:
    """A trained multi-task model: its encoder, its heads and their label sets, on a resolved runtime (device,
    precision, packing)."""

    def __init__(self, model: MultiTaskModel, runtime: Runtime, run: RunDir | None = None, batch_size: int = 64,
                 name: str | None = None):
        self.model = model.eval()
        self.runtime = runtime
        self.run = run
        self.batch_size = batch_size
        # What to call the model: its run directory's name, or the repo id it was loaded by.
        self.name = name or (run.path.name if run is not None else "model")

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

        Inputs are strings; token tasks split them on whitespace (or take pre-split token lists); pair tasks take
        pairs: [text, text] lists (or objects with the type's field names: sentence1 and sentence2; query and
        passage). Classification gives {"label", "probs"}; token classification gives {"tokens", "tags",
        "entities": [{"type", "start", "end", "text"}]} with word indices, end exclusive; similarity and retrieval
        give {"score"} (the cosine), pair classification {"label", "probs"}. Without `task`, pairs go to the pair
        tasks and texts to the others.
        """
        names = [task] if task else self.tasks_for(texts)
        for name in names:
            if name not in self.tasks:
                raise InputError(f"unknown task '{name}'; this model has {', '.join(self.tasks)}")
        with self.runtime.autocast():
            out = inference.predict(self.model, texts, names, self.batch_size, self.runtime.inference_max_tokens)
        return out[task] if task else out

    def tasks_for(self, items: Sequence) -> list[str]:
        """The tasks that take inputs like `items`: the pair tasks for pairs (lists or objects, every one), the others
        for texts (strings; word lists where the model has no pair task: otherwise name the token task).

        Raises:
            InputError: when no task of the model takes them.
        """
        pairs = bool(items) and all(not isinstance(item, str) for item in items)
        pair_tasks = [name for name, spec in self.tasks.items() if spec.kind.reads == "pairs"]
        if pairs and pair_tasks:
            return pair_tasks
        names = [name for name in self.tasks if name not in pair_tasks and not any(isinstance(i, dict) for i in items)]
        if not names:
            wanted = "pairs ([text, text])" if not pairs else "texts (strings)"
            raise InputError(f"no task of this model takes these inputs: its tasks ({', '.join(self.tasks)}) take "
                             f"{wanted}")
        return names

    def evaluate(self, texts: Sequence[str] | Sequence[Sequence[str]], labels: Sequence, task: str | None = None
                 ) -> dict[str, float]:
        """Metrics of `task` (the model's only task where `task` is None) on texts and their gold labels as a user
        holds them: a label name per text (classification), a list of names per text (multi-label), a tag per word
        (token classification: texts as word lists, or strings split on whitespace).

        Example:
            >>> texts, labels = ["Where is my parcel?", "Refund me"], ["shipping", "billing"]
            >>> model.evaluate(texts, labels, task="topic")  # doctest: +SKIP
            {'accuracy': 1.0, 'macro_f1': 1.0}

        Raises:
            InputError: an unknown task, texts and labels of different lengths, a label the model does not know
                (naming its row).
        """
        if task is None:
            if len(self.tasks) != 1:
                raise InputError(f"this model has several tasks ({', '.join(self.tasks)}): name one with task=")
            task = next(iter(self.tasks))
        if task not in self.tasks:
            raise InputError(f"unknown task '{task}'; this model has {', '.join(self.tasks)}")
        if len(texts) != len(labels):
            raise InputError(f"{len(texts)} texts but {len(labels)} labels: give one label per text")
        spec = self.tasks[task]
        ids = {label: i for i, label in enumerate(spec.labels)}
        examples = []
        for row, (item, gold) in enumerate(zip(texts, labels, strict=True)):
            try:
                label = spec.kind.label_ids(gold, ids)
            except KeyError as exc:
                raise InputError(f"labels[{row}]: {exc} is not a label of task '{task}' (it has "
                                 f"{', '.join(spec.labels)})") from None
            examples.append(replace(spec.kind.example_for_prediction(item), label=label))
        return self.evaluate_examples(task, examples)

    def evaluate_examples(self, task: str, examples: list[Example]) -> dict[str, float]:
        """Metrics of `task` on labelled examples (labels as ids of this model's label set)."""
        feats = inference.featurize(self.model, task, examples, labelled=True)
        with self.runtime.autocast():
            logits = inference.task_logits(self.model, task, feats, self.batch_size, self.runtime.inference_max_tokens)
        return inference.score(self.tasks[task], logits, [e.label for e in examples])

def load(model: str | Path, device: str = "auto", mixed_precision: str = "auto", packing: bool | None = None,
         trust_remote_code: bool = False, revision: str | None = None, verify: bool = True) -> TrainedModel:
    """Load a trained model into a `TrainedModel`, on a runtime resolved as for `thawing embed` (auto: a GPU in bf16
    with varlen packing where there is one; CPU in fp32 otherwise).

    `model` is a run directory (its final/ is loaded), a final/ folder itself, or the Hugging Face repo id
    ("owner/name") of a model pushed with `thawing push`: downloaded, or read from the Hugging Face cache (offline
    with HF_HUB_OFFLINE=1). A local folder of that name takes precedence over the repo.

    `manifest.json` is checked first: a file changed since training (or a label list in another order) is refused,
    in a download as in a run. Every thawing version writes one, so a model without it is refused too (a deleted
    manifest would otherwise turn every check off); `verify=False` loads a model unchecked, with a warning.
    `trust_remote_code` runs an encoder's own modeling code (a run trained with `model.trust_remote_code: true`); it
    is never taken from the model's files. `revision` is a branch, tag or commit of the repo (a repo id only).

    Raises:
        InputError: for a folder that holds no trained model, a damaged or changed one.
        ModelNotFoundError: for a repo id that is neither a local folder nor found in the cache or on the Hub.
        ThawingError: for an encoder with its own code without `trust_remote_code`.
    """
    from thawing.model.hub import model_folder

    folder = model_folder(model, revision)
    local = folder == Path(model).expanduser()
    run = RunDir.of_model(folder)
    if not run.tasks.is_file():
        where = "" if local else f" (the Hugging Face repo '{model}')"
        raise InputError(f"no trained model here{where} (expected final/tasks.json, or tasks.json in a model folder; "
                         "a plain sentence encoder loads with thawing.load_encoder)", path=folder)
    specs = task_specs(run.read_json(run.tasks), run.tasks)
    if not verify:
        log.warning("%s: loaded without checking its files against manifest.json (verify=False)", run.final)
    elif not run.verify_final({t: s.labels for t, s in specs.items()}):
        raise InputError("no manifest.json, so its files cannot be checked against the model that was trained (every "
                         "thawing writes one: a model without it was changed after training); load it unchecked "
                         "with --no-verify (thawing.load(..., verify=False)) if you trust it", path=run.final)
    encoder = load_encoder(str(run.encoder_dir), trust_remote_code=trust_remote_code)
    multitask = MultiTaskModel(encoder, specs)
    _load_heads(multitask, run)
    bad = next((name for name, p in multitask.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:  # a model that computes NaN would answer every request with NaN probabilities
        raise InputError(f"weights that are not finite ({bad}): this model cannot predict; train it again",
                         path=run.final)

    def sample():
        ids = encoder.pad(encoder.token_ids(["a sentence to check packing with.", "and another one"]))
        return ids["input_ids"], ids["attention_mask"]

    runtime = resolve(encoder, device=device, precision=mixed_precision, packing_=packing, training=False,
                      sample=sample)
    multitask.to(runtime.device)
    apply(runtime, encoder)
    return TrainedModel(multitask, runtime, run, name=run.path.name if local else str(model))


def task_specs(raw: Any, path: Path) -> dict[str, TaskSpec]:
    """final/tasks.json as `TaskSpec`s, each checked: a known type, and labels that are distinct, non-empty strings.

    Raises:
        InputError: naming the file and the task.
    """
    from thawing.config import HeadConfig
    from thawing.task_types import TASK_TYPES

    if not isinstance(raw, dict) or not raw:
        raise InputError("expected an object of tasks: the file is damaged", path=path)
    known = {f.name for f in fields(TaskSpec)}
    specs = {}
    for task, spec in raw.items():
        if not isinstance(spec, dict) or not {"type", "labels", "head"} <= set(spec) or set(spec) - known:
            raise InputError(f"task '{task}': expected the fields {', '.join(sorted(known))}", path=path)
        if spec["type"] not in TASK_TYPES:
            raise InputError(f"task '{task}': unknown type {spec['type']!r}", path=path)
        try:
            HeadConfig.model_validate(spec["head"])
        except ValueError:  # pydantic's ValidationError
            raise InputError(f"task '{task}': not a head description: {spec['head']!r:.200}", path=path) from None
        labels = spec["labels"]
        if (not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels)
                or len(set(labels)) != len(labels) or (not labels and TASK_TYPES[spec["type"]].min_labels)):
            raise InputError(f"task '{task}': labels must be distinct non-empty strings, got {labels!r:.200}",
                             path=path)
        specs[task] = TaskSpec(**spec)
    return specs


def _load_heads(model: MultiTaskModel, run: RunDir) -> None:
    """Put final/heads.safetensors into the heads built from tasks.json, refusing weights that do not fit them
    (a label dropped from tasks.json leaves a head with one output more than its labels)."""
    state = run.load_heads_state()
    expected = model.heads.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise InputError(f"does not match tasks.json: missing {missing[:3]}, unexpected {extra[:3]}", path=run.heads)
    for name, value in state.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            task = name.split(".", 1)[0]
            raise InputError(f"'{name}' has shape {tuple(value.shape)}, but tasks.json makes the head of '{task}' "
                             f"{tuple(expected[name].shape)} ({len(model.specs[task].labels)} labels): tasks.json and "
                             "the heads do not belong together", path=run.heads)
    model.heads.load_state_dict(state)


def train(config: RunConfig | dict | str | Path, *, callbacks: Sequence[Callback] = (), verbose: bool = True,
          run_dir: str | None = None, run_optional: bool | None = None, encoder: Any = None) -> RunDir:
    """Train per `config` and write a run directory, with its report; returns it (its repr names the folder and the
    final score).

    Args:
        config: A `RunConfig`, a YAML config's path, or a dict holding what a config file would (relative paths in
            it are taken from the working directory). In a dict or `RunConfig`, a task's split may also be rows in
            memory: a list of dicts, or a `datasets.Dataset`; a task's whole `data` may be a `datasets.DatasetDict`.
            The run directory keeps a JSONL copy of such splits (`data/<task>_<split>.jsonl`, named in its
            config.yaml), so `thawing train --resume` and `thawing evaluate` read the same rows.
        callbacks: Called with every training event as it happens (`thawing.training.events`: stage started and
            ended, each update, each evaluation, the final results, ...).
        verbose: Show progress on stderr (a bar per stage, tables per evaluation), as `thawing train` does.
        run_dir: Write the run here instead of runs/<name>-<timestamp>.
        run_optional: Also run stages marked optional (full fine-tuning), as `thawing train --full`.
        encoder: An `Encoder` to train instead of loading `config.model.name` (e.g. one built in memory).

    Raises:
        ThawingError: For a bad config or bad data (naming the task, split and row of rows in memory), before any
            run directory exists.

    Example:
        >>> rows = [{"text": "great film", "label": "pos"}, {"text": "awful film", "label": "neg"}] * 8
        >>> run = thawing.train({"tasks": {"sentiment": {"type": "classification",
        ...                                              "data": {"train": rows}}}})  # doctest: +SKIP
        >>> run                                                                      # doctest: +SKIP
        RunDir('runs/run-20261207-101500', score=0.9375)
    """
    from thawing.config import load_config, parse_config, resolve_paths
    from thawing.progress import ProgressPrinter
    from thawing.reporting.report import report_finished
    from thawing.training.loop import train as run_training

    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif not isinstance(config, RunConfig):
        config = resolve_paths(parse_config(config), Path.cwd())
    printer = ProgressPrinter() if verbose and distributed.is_main() else None
    try:
        run = run_training(config, run_dir=run_dir, callbacks=[*callbacks, *([printer] if printer else [])],
                           run_optional=run_optional, encoder=encoder)
    finally:
        if printer is not None:
            printer.stop()
    if distributed.is_main():
        report_finished(run.path)
    return run


def evaluate_final(run: RunDir, trust_remote_code: bool = False) -> dict:
    """Every task of the run's final model on each of its dev and test splits, read from the run's data (the report's
    breakdown, when the final model changed since training wrote one): {"final": stamp, "tasks": {task: {split:
    {"metrics": ..., "detail": ...}}}}.

    Raises:
        ThawingError: the model or its data cannot be read (e.g. the data files moved).
    """
    from thawing.config import load_config
    from thawing.model.inference import split_examples
    from thawing.task_types.breakdown import SPLITS, split_entry

    config = load_config(run.config)
    model = load(run.path, trust_remote_code=trust_remote_code)
    tasks: dict[str, dict] = {}
    for task, spec in model.tasks.items():
        for split in SPLITS:
            examples = split_examples(config, task, spec.labels, split)
            if not examples:
                continue
            tasks.setdefault(task, {})[split] = split_entry(spec, model.logits(task, examples),
                                                            [e.label for e in examples])
    return {"final": run.final_stamp(), "tasks": tasks}
