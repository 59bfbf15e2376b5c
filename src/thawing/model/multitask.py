"""One shared encoder, one head per task, keyed by task name."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from thawing.config import HeadConfig
from thawing.model.encoder import Encoder
from thawing.task_types import task_type


@dataclass
class TaskSpec:
    """What a head needs to be rebuilt: saved as `final/tasks.json`."""

    type: str
    labels: list[str]
    head: dict
    prompt: str | None = None
    tag_scheme: str = "IOB2"
    loss_weight: float = 1.0
    threshold: float | None = None  # multi-label: the probability above which a label is predicted
    objective: dict = field(default_factory=dict)  # the type's loss settings (similarity: loss; retrieval: temperature)

    @property
    def kind(self):
        """The task type (`thawing.task_types`): what differs between classification, token tasks and the rest."""
        return task_type(self.type)


class MultiTaskModel(nn.Module):
    """`encoder` plus `heads[task]`; each batch belongs to one task."""

    def __init__(self, encoder: Encoder, specs: dict[str, TaskSpec]):
        super().__init__()
        self.encoder = encoder
        self.specs = specs
        self.heads = nn.ModuleDict({
            task: spec.kind.build_head(encoder.hidden_size if spec.kind.reads == "tokens" else encoder.embedding_size,
                                       spec, HeadConfig.model_validate(spec.head))
            for task, spec in specs.items()
        })

    def features(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What the task's head reads: sentence embeddings (B, D), token states (B, T, H), or a pair task's sentence
        embeddings (B, S, D) from its (B, S, T) token ids."""
        input_ids, attention_mask, sides = flat(input_ids, attention_mask)
        return self.read(task, self.encoder.token_states(input_ids, attention_mask), attention_mask, sides)

    def read(self, task: str, states: torch.Tensor, attention_mask: torch.Tensor, sides: int | None = None
             ) -> torch.Tensor:
        """The task's head input from the backbone's last states: pooled, or the states themselves; a pair task's
        (`sides` texts per example, flattened) pooled and stacked per example (B, S, D)."""
        if self.specs[task].kind.reads == "tokens":
            return states
        pooled = self.encoder.pool(states, attention_mask)
        return pooled.view(-1, sides, pooled.shape[-1]) if sides else pooled

    def forward(self, task: str, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
                features: torch.Tensor | None = None, hidden: torch.Tensor | None = None,
                first_layer: int | None = None, embed: bool = False, lengths: list[int] | None = None):
        """Logits: (B, C) for sentence tasks, (B, T, C) for token tasks. One entry point for every way a stage runs
        (so that a wrapper such as DDP sees each of them), by what it is given:

        - `input_ids`, `attention_mask`: the whole model;
        - `features`: what the head reads, computed earlier by a frozen encoder (only the head runs);
        - `hidden`, `attention_mask`, `first_layer`: cached states entering layer `first_layer` (the layers above run).

        `embed`: also return the sentence embeddings (B, D) of the same pass, as `(logits, embeddings)` (anchoring
        to the pretrained encoder, training/retain.py); not with `features`. `lengths`: each sentence's real tokens,
        known on the host (a packed forward then plans its layout without reading the mask back from the device).
        """
        if features is not None:
            return self.heads[task](features)
        sides = None
        if hidden is not None:
            from thawing.model.boundary import top_states

            assert attention_mask is not None and first_layer is not None
            states = top_states(self.encoder, first_layer, hidden, attention_mask, lengths)
        else:
            assert input_ids is not None and attention_mask is not None
            input_ids, attention_mask, sides = flat(input_ids, attention_mask)
            # `lengths` are one per example: a pair task's flattened rows (S texts each) find theirs in the mask
            states = self.encoder.token_states(input_ids, attention_mask, None if sides else lengths)
        inputs = self.read(task, states, attention_mask, sides)
        logits = self.heads[task](inputs)
        if not embed:
            return logits
        # A pair task's embeddings for the losses on them: its first texts' (retain.py anchors those)
        return logits, inputs[:, 0] if sides else self.encoder.pool(states, attention_mask)

    def loss(self, task: str, logits: torch.Tensor, labels: torch.Tensor, divisor: float | None = None) -> torch.Tensor:
        """The task type's loss over labelled items (their mean, or their sum divided by `divisor`), weighted."""
        spec = self.specs[task]
        return spec.kind.loss(logits, labels, divisor, **spec.objective) * spec.loss_weight


def flat(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """A pair task's (B, S, T) token ids as (B * S, T) rows, example by example, and S; other batches as they are."""
    if input_ids.dim() != 3:
        return input_ids, attention_mask, None
    return input_ids.flatten(0, 1), attention_mask.flatten(0, 1), input_ids.shape[1]
