"""Task heads: a linear layer or a small MLP over what the task's type reads (the sentence embedding, or token
states). `centroid_init` builds a head without gradients (nearest class centroid), which gives the fully frozen
network a real baseline.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class HeadConfig(Protocol):
    """What a head is built from: a task's `head:` settings (config's `HeadConfig`, a layer above this one)."""

    type: str  # "linear" or "mlp"
    hidden_size: int
    dropout: float


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


class Head(nn.Module):
    """Features (B, D) or (B, T, H) -> logits (B, C) or (B, T, C); the last module of `net` is the output layer."""

    def __init__(self, in_features: int, num_labels: int, cfg: HeadConfig):
        super().__init__()
        self.net = build_mlp(in_features, num_labels, cfg)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


@torch.no_grad()
def centroid_init(head: Head, features: torch.Tensor, labels: torch.Tensor) -> None:
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


class PairHead(nn.Module):
    """Sentence-BERT's classifier over a pair: features (B, 2, D), the two sentence embeddings u and v, -> logits
    (B, C) from (u, v, |u - v|), and u * v with `product`. The last module of `net` is the output layer."""

    def __init__(self, in_features: int, num_labels: int, cfg: HeadConfig, product: bool = False):
        super().__init__()
        self.product = product
        self.net = build_mlp(in_features * (4 if product else 3), num_labels, cfg)

    def combine(self, pairs: torch.Tensor) -> torch.Tensor:
        u, v = pairs[:, 0], pairs[:, 1]
        return torch.cat([u, v, (u - v).abs()] + ([u * v] if self.product else []), dim=-1)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.net(self.combine(pairs))


class Cosine(nn.Module):
    """No parameters: features (B, S, D) -> (B, 1), the cosine of each example's first two embeddings (float32)."""

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return nn.functional.cosine_similarity(pairs[:, 0].float(), pairs[:, 1].float(), dim=-1).unsqueeze(-1)


class Embeddings(nn.Module):
    """No parameters: the embeddings themselves (B, S, D), which the task's loss and metrics compare."""

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return pairs
