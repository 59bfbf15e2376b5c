"""One shared encoder, one head per task, keyed by task name."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from thawing.config import HeadConfig
from thawing.data.batching import IGNORE
from thawing.model.encoder import Encoder
from thawing.model.heads import build_head


@dataclass
class TaskSpec:
    """What a head needs to be rebuilt: saved as `final/tasks.json`."""

    type: str
    labels: list[str]
    head: dict
    prompt: str | None = None
    tag_scheme: str = "IOB2"
    loss_weight: float = 1.0


class MultiTaskModel(nn.Module):
    """`encoder` plus `heads[task]`; each batch belongs to one task."""

    def __init__(self, encoder: Encoder, specs: dict[str, TaskSpec]):
        super().__init__()
        self.encoder = encoder
        self.specs = specs
        self.heads = nn.ModuleDict(
            {
                task: build_head(
                    spec.type,
                    encoder.embedding_size if spec.type == "classification" else encoder.hidden_size,
                    len(spec.labels),
                    HeadConfig.model_validate(spec.head),
                )
                for task, spec in specs.items()
            }
        )

    def features(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What the task's head reads: sentence embeddings (B, D) or token states (B, T, H)."""
        states = self.encoder.token_states(input_ids, attention_mask)
        if self.specs[task].type == "classification":
            return self.encoder.pool(states, attention_mask)
        return states

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits: (B, C) for classification, (B, T, C) for token classification."""
        return self.heads[task](self.features(task, input_ids, attention_mask))

    def forward_from(self, task: str, first: int, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits from cached hidden states entering layer `first` (only the layers above run)."""
        from thawing.model.boundary import top_states

        states = top_states(self.encoder, first, hidden, attention_mask)
        if self.specs[task].type == "classification":
            return self.heads[task](self.encoder.pool(states, attention_mask))
        return self.heads[task](states)

    def loss(self, task: str, logits: torch.Tensor, labels: torch.Tensor, divisor: float | None = None) -> torch.Tensor:
        """Cross-entropy over labelled items (sub-tokens after the first are ignored): their mean, or their
        sum divided by `divisor`, so that the training loop can average over a whole update's micro-batches."""
        flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
        if divisor is None:
            return F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE)
        return F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE, reduction="sum") / divisor
