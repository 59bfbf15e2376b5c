"""Anchoring to the pretrained encoder while a stage trains, so that the encoder keeps working as an embedding model:

    distill   a loss between the current sentence embeddings and the pretrained encoder's, on the texts of each
              micro-batch (1 - cosine, or the mean squared error), times its weight; the pretrained side is computed
              once per task before training (and again from the freshly loaded model when a run resumes)
    l2sp      the squared distance of the trainable encoder weights from their pretrained values, times its weight,
              once per update (L2-SP, Li et al. 2018)

A weight of 0 (or no `retain`) computes nothing, so the run is exactly the run without it. Both losses are logged
apart from the task losses, as training records of the tasks "retain:distill" and "retain:l2sp".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from thawing.config import RetainConfig
from thawing.data.batching import Features, collate, sorted_batches
from thawing.distributed import map_batches
from thawing.model.encoder import evaluating


@dataclass
class Pretrained:
    """The pretrained encoder's side: each task's training sentence embeddings, and the encoder's weights."""

    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # task -> (N, D), on the host
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name -> value, on the model's device


def distills(cfg: RetainConfig | None) -> bool:
    return cfg is not None and cfg.distill is not None and cfg.distill.weight > 0


def l2sp_on(cfg: RetainConfig | None) -> bool:
    return cfg is not None and cfg.l2sp is not None and cfg.l2sp.weight > 0


def needed(plan) -> tuple[bool, bool]:
    """Whether any stage of the plan distills, and whether any uses L2-SP (with a weight above 0)."""
    return any(distills(s.retain) for s in plan), any(l2sp_on(s.retain) for s in plan)


@torch.no_grad()
def pretrained_side(model, features: dict[str, dict[str, Features]], groups: dict, plan, runtime,
                    batch_size: int) -> Pretrained | None:
    """What anchoring compares against, taken from the untrained model; None when no stage anchors."""
    distill, l2sp = needed(plan)
    if not (distill or l2sp):
        return None
    out = Pretrained()
    if l2sp:
        out.weights = {name: p.detach().clone() for g, members in groups.items() if not g.startswith("head:")
                       for name, p in members}
    if distill:
        encoder = model.encoder
        with evaluating(encoder), runtime.autocast():
            for task, splits in features.items():
                feats = splits["train"]

                def compute(indices: list[int], feats: Features = feats) -> torch.Tensor:
                    batch = collate(encoder, feats, indices)
                    ids, mask = batch["input_ids"].to(encoder.device), batch["attention_mask"].to(encoder.device)
                    if ids.dim() == 3:  # a pair task: its first texts, whose embeddings its forward returns
                        ids, mask = ids[:, 0], mask[:, 0]
                    return encoder.pool(encoder.token_states(ids, mask), mask).float().cpu()

                rows = torch.empty(len(feats), encoder.embedding_size)
                # With several processes each computes its share of the batches, and all get every row.
                batches = sorted_batches(feats.lengths, batch_size, runtime.inference_max_tokens)
                for indices, values in map_batches(batches, compute, f"Anchoring {task}", show=False):
                    rows[indices] = values
                out.embeddings[task] = rows
    return out


def distill_loss(cfg: RetainConfig | None, pretrained: Pretrained | None, task: str, indices: list[int],
                 embeddings: torch.Tensor) -> torch.Tensor | None:
    """The weighted distillation loss of one micro-batch (its mean over sentences), or None when off."""
    if not distills(cfg) or pretrained is None:
        return None
    target = pretrained.embeddings[task][indices].to(embeddings.device)
    current = embeddings.float()
    if cfg.distill.loss == "cosine":
        distance = 1 - F.cosine_similarity(current, target, dim=-1)
    else:
        distance = (current - target).pow(2).mean(dim=-1)
    return cfg.distill.weight * distance.mean()


def l2sp_loss(cfg: RetainConfig | None, pretrained: Pretrained | None, named: dict) -> torch.Tensor | None:
    """The weighted squared distance of the stage's trainable encoder weights from their pretrained values."""
    if not l2sp_on(cfg) or pretrained is None:
        return None
    terms = [(p - pretrained.weights[name]).pow(2).sum() for name, p in named.items() if name in pretrained.weights]
    return cfg.l2sp.weight * torch.stack(terms).sum() if terms else None
