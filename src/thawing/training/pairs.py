"""SetFit's contrastive objective as a loss beside a classification task's cross-entropy (`pair_loss: W` on the task).

Within each micro-batch, every pair of labelled sentences is a training pair: the cosine similarity of their sentence
embeddings is pulled to 1 when they share a label and to 0 when they do not (mean squared error, SetFit's
CosineSimilarityLoss). Positive and negative pairs count equally, as SetFit draws as many of each. With few examples
per class this turns n sentences into n(n-1)/2 signals for the encoder, which is where SetFit gets its few-shot
strength; it only acts where the encoder trains (a frozen encoder has no gradient to take).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pair_loss(weight: float, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """The weighted pair loss of one micro-batch, or None when it holds no pair (fewer than 2 labelled sentences)."""
    keep = labels >= 0
    if weight == 0 or int(keep.sum()) < 2:
        return None
    unit = F.normalize(embeddings[keep].float(), dim=-1)
    wanted = labels[keep]
    rows, cols = torch.triu_indices(len(wanted), len(wanted), offset=1, device=unit.device)
    cosine = (unit[rows] * unit[cols]).sum(-1)
    same = wanted[rows] == wanted[cols]
    error = (cosine - same.float()) ** 2
    parts = [error[kind].mean() for kind in (same, ~same) if bool(kind.any())]
    return weight * torch.stack(parts).mean()
