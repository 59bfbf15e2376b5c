"""Pooling: token states (B, T, H) and an attention mask (B, T) to one vector per sentence (B, H).

Pure functions, registered in `POOLERS`. They follow sentence-transformers' definitions exactly, so
thawing's embeddings equal `SentenceTransformer.encode` for the same model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens where `mask` is 1 (prompt tokens included, as stella does)."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    total = (states * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp(min=1e-9)
    return total / count


def cls_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # noqa: ARG001 (the POOLERS signature)
    """The first token's state ([CLS] for BERT-style models)."""
    return states[:, 0]


def last_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The state of the last real token; works with left and right padding."""
    length = mask.shape[1]
    # argmax over the flipped mask finds the last 1, whichever side was padded.
    last = (length - 1) - torch.argmax(mask.flip(dims=[1]).to(torch.int64), dim=1)
    return states[torch.arange(states.shape[0], device=states.device), last]


def max_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over real tokens."""
    masked = states.masked_fill(mask.unsqueeze(-1) == 0, torch.finfo(states.dtype).min)
    return masked.max(dim=1).values


POOLERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": mean_pool,
    "cls": cls_pool,
    "last": last_pool,
    "max": max_pool,
}

# sentence-transformers' Pooling config keys for each of our modes.
ST_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "last": "pooling_mode_lasttoken",
}


def pooling_from_st_config(config: dict) -> str:
    """The pooling mode named by a sentence-transformers ``1_Pooling/config.json``."""
    if isinstance(config.get("pooling_mode"), str):  # newer sentence-transformers spell it out
        mode = {"lasttoken": "last", "mean_tokens": "mean"}.get(config["pooling_mode"], config["pooling_mode"])
        if mode in POOLERS:
            return mode
    chosen = [mode for mode, key in ST_POOLING_KEYS.items() if config.get(key)]
    if len(chosen) == 1:
        return chosen[0]
    raise ValueError(f"unsupported pooling config {config}; thawing supports exactly one of {list(POOLERS)}")
