"""Everything a run needs, built from a config before a run directory exists: tasks (all input errors
surface here, before any training), the encoder, the multi-task model, tokenized features."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from thawing.config import RunConfig
from thawing.config.tasks import TaskData, load_tasks
from thawing.data.batching import Features
from thawing.errors import ConfigError
from thawing.model.encoder import Encoder
from thawing.model.inference import featurize
from thawing.model.loading import load_encoder
from thawing.model.multitask import MultiTaskModel, TaskSpec
from thawing.store.run_dir import folder_problem
from thawing.task_types import task_type


@dataclass
class Prepared:
    config: RunConfig
    model: MultiTaskModel
    features: dict[str, dict[str, Features]]  # task -> split -> features
    gold: dict[str, dict[str, list]]  # task -> split -> labels (class ids or per-word tag ids)

    @property
    def primary(self) -> dict[str, str]:
        """Each task's primary metric (its type's), which the selection score averages."""
        return {task: spec.kind.primary_metric for task, spec in self.model.specs.items()}


def task_prompt(config: RunConfig, task: str) -> str | None:
    return config.tasks[task].prompt or config.model.prompt


def build_model(config: RunConfig, tasks: dict[str, TaskData], encoder: Encoder | None = None) -> MultiTaskModel:
    """The encoder named by the config (or one given) plus one freshly initialised head per task (seeded)."""
    encoder = encoder or load_encoder(
        config.model.name,
        max_length=config.model.max_length,
        pooling=config.model.pooling,
        normalize=config.model.normalize,
        trust_remote_code=config.model.trust_remote_code,
    )
    specs = {
        name: TaskSpec(
            type=data.type,
            labels=data.labels,
            head=config.tasks[name].head.model_dump(),
            prompt=task_prompt(config, name),
            tag_scheme=config.tasks[name].tag_scheme,
            loss_weight=config.tasks[name].loss_weight,
            # multi-label: the configured threshold (0.5 by default), or None: the type tunes it on dev (`decide`)
            threshold=(None if data.type != "multi-label" or config.tasks[name].threshold == "tune"
                       else config.tasks[name].threshold or 0.5),
            objective=task_type(data.type).objective(config.tasks[name]),
        )
        for name, data in tasks.items()
    }
    torch.manual_seed(config.train.seed)  # heads start the same whatever the encoder's loading consumed
    return MultiTaskModel(encoder, specs)


def check_places(config: RunConfig) -> None:
    """The folders the run will write besides its run directory, checked before anything loads: a `cache.dir` that
    is a file or read-only would otherwise fail at the first frozen stage, after the data, model and plan.

    Raises:
        ConfigError: naming the key and the path.
    """
    if config.cache.enabled is not False and config.cache.dir is not None:
        problem = folder_problem(config.cache.dir)
        if problem:
            raise ConfigError(f"cache.dir: cannot use '{config.cache.dir}' as the feature cache: {problem} (choose "
                              "another folder, or set cache.enabled: false)")


def checkpoint_activations(encoder: Encoder) -> None:
    """train.gradient_checkpointing: the backbone recomputes each layer's activations in the backward (it applies to
    layers in training mode, so frozen layers run as before).

    Raises:
        ConfigError: when the backbone's architecture does not support it.
    """
    backbone = encoder.backbone
    if not getattr(backbone, "supports_gradient_checkpointing", False):
        raise ConfigError(f"train.gradient_checkpointing: {type(backbone).__name__} does not support gradient "
                          "checkpointing; set it to false")
    # Non-reentrant: it works with inputs that need no gradient (the boundary cache's) and with DDP's hooks.
    # transformers 5 names it activation checkpointing (the old name warns); 4 has the old name only.
    if hasattr(backbone, "activation_checkpointing_enable"):
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def prepare(config: RunConfig, encoder: Encoder | None = None) -> Prepared:
    """Check the places the run writes, load data (failing early on bad input), the encoder and the heads, and
    tokenize every split."""
    check_places(config)
    torch.manual_seed(config.train.seed)
    tasks = load_tasks(config.tasks, seed=config.train.seed, small=config.train.small_data)
    model = build_model(config, tasks, encoder)
    if config.train.gradient_checkpointing:
        checkpoint_activations(model.encoder)
    features = {t: {s: featurize(model, t, ex) for s, ex in d.splits.items()} for t, d in tasks.items()}
    gold = {t: {s: [e.label for e in ex] for s, ex in d.splits.items()} for t, d in tasks.items()}
    return Prepared(config, model, features, gold)
