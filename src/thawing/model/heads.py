"""Task heads: classification over the sentence embedding, token classification over token states.

Heads are small `nn.Module`s registered in `HEADS` by task type. `centroid_init` builds a head
without gradients (nearest class centroid), which gives the fully frozen network a real baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from thawing.config import HeadConfig


def build_mlp(in_features: int, num_labels: int, cfg: HeadConfig) -> nn.Sequential:
    """A linear head, or a one-hidden-layer MLP, with dropout on its input."""
    if cfg.type == "linear":
        return nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(in_features, num_labels))
    return nn.Sequential(
        nn.Dropout(cfg.dropout),
        nn.Linear(in_features, cfg.hidden_size),
        nn.GELU(),
        nn.Dropout(cfg.dropout),
        nn.Linear(cfg.hidden_size, num_labels),
    )


class ClassificationHead(nn.Module):
    """Sentence embedding (B, D) -> class logits (B, C)."""

    uses = "sentence"

    def __init__(self, in_features: int, num_labels: int, cfg: HeadConfig):
        super().__init__()
        self.net = build_mlp(in_features, num_labels, cfg)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class TokenClassificationHead(ClassificationHead):
    """Token states (B, T, H) -> tag logits (B, T, C); words are labelled on their first sub-token."""

    uses = "tokens"


HEADS: dict[str, type[ClassificationHead]] = {
    "classification": ClassificationHead,
    "token-classification": TokenClassificationHead,
}


def build_head(task_type: str, in_features: int, num_labels: int, cfg: HeadConfig) -> ClassificationHead:
    if task_type not in HEADS:
        raise ValueError(f"unknown task type '{task_type}'; choose one of {', '.join(HEADS)}")
    return HEADS[task_type](in_features, num_labels, cfg)


@torch.no_grad()
def centroid_init(head: ClassificationHead, features: torch.Tensor, labels: torch.Tensor) -> None:
    """Turn a linear head into a nearest-centroid classifier, with no gradient step.

    With class centroids c_k, logits x.c_k - |c_k|^2 / 2 rank classes exactly as -|x - c_k|^2
    does (the |x|^2 term is the same for every class). A class with no example keeps a zero
    centroid and a very low bias, so it is never predicted.

    Args:
        head: a head whose last module is a `Linear` (an MLP head is replaced by a linear one).
        features: (N, D) sentence embeddings or (N, H) token states of labelled tokens.
        labels: (N,) class ids.
    """
    last = head.net[-1]
    if len(head.net) != 2:  # MLP: centroids need a linear map, so keep only dropout + a fresh linear
        head.net = nn.Sequential(head.net[0], nn.Linear(features.shape[1], last.out_features)).to(features.device)
        last = head.net[-1]
    num = last.out_features
    features = features.to(last.weight.dtype)
    sums = torch.zeros(num, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num).to(features.dtype)
    centroids = sums / counts.clamp(min=1).unsqueeze(1)
    last.weight.copy_(centroids)
    bias = -0.5 * (centroids * centroids).sum(dim=1)
    last.bias.copy_(torch.where(counts > 0, bias, torch.full_like(bias, -1e4)))
