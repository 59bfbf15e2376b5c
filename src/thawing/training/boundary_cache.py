"""The boundary cache: when only the top layers train, the hidden states entering the lowest trainable layer
are computed once per example (frozen layers in eval mode, no gradients), stored unpadded, and each training
step runs only the layers above. Cached and uncached steps give the same losses and gradients (tested in fp32).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from thawing.data.batching import Features, collate, sorted_batches, to_device
from thawing.distributed import map_batches
from thawing.model.boundary import check_boundary, hidden_at
from thawing.model.encoder import Encoder

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BoundaryCache:
    """Per-example hidden states (tokens_i, H) entering layer `first`, for one task's train split."""

    first: int
    states: list[torch.Tensor]

    def batch(self, indices: list[int], width: int, device, dtype=torch.float32) -> torch.Tensor:
        """Right-padded (B, width, H) states for a batch, in the compute dtype: assembled in host memory (pinned for
        a GPU) and sent in one copy that the host does not wait for (a copy per example made it wait each time)."""
        hidden = self.states[0].shape[-1]
        pinned = torch.device(device).type == "cuda"
        out = torch.zeros(len(indices), width, hidden, dtype=self.states[0].dtype, pin_memory=pinned)
        for row, i in enumerate(indices):
            state = self.states[i]
            out[row, : state.shape[0]] = state
        return to_device(out, device).to(dtype)

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.states)


def first_trainable_layer(trainable: list[str]) -> int | None:
    """The lowest trainable layer index (its weights or its LoRA adapters), if the embeddings are frozen and some layer
    trains."""
    if "embeddings" in trainable:
        return None
    layers = [int(g.split(".")[-1]) for g in trainable if g.startswith(("layers.", "lora:layers."))]
    return min(layers) if layers and min(layers) > 0 else None


def estimate_bytes(features: list[Features], hidden: int, dtype: torch.dtype) -> int:
    """N x tokens x hidden x bytes per value: what the cache will hold."""
    tokens = sum(sum(f.lengths) for f in features)
    return tokens * hidden * torch.tensor([], dtype=dtype).element_size()


def cache_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def usable(encoder: Encoder, first: int, sample: Features) -> str | None:
    """Why the boundary cache cannot be used for this model, or None when it can."""
    if encoder.tokenizer.padding_side != "right":
        return "the tokenizer pads on the left, so cached states would depend on batch padding"
    batch = collate(encoder, sample, list(range(min(len(sample), 8))))
    batch = {k: v.to(encoder.device) for k, v in batch.items()}
    difference = check_boundary(encoder, first, batch)
    if difference is None:
        return "this architecture's forward cannot be split at a layer"
    if difference > 1e-3:
        return f"the split forward differs from the whole one by {difference:.2e}"
    return None


@torch.no_grad()
def build(encoder: Encoder, first: int, features: Features, batch_size: int, dtype: torch.dtype,
          max_tokens: int | None = None) -> BoundaryCache:
    """Run the frozen layers below `first` once over every example (batches of `batch_size`, or `max_tokens`)."""
    states: list[torch.Tensor | None] = [None] * len(features)
    device = encoder.device

    def compute(idx: list[int]) -> list[torch.Tensor]:
        batch = collate(encoder, features, idx)
        hidden = hidden_at(encoder, first, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        return [hidden[row, : len(features.input_ids[i])].to(dtype).cpu().clone() for row, i in enumerate(idx)]

    # With several processes each computes its share of the batches and all receive every state: built once in all.
    batches = sorted_batches(features.lengths, batch_size, max_tokens)
    for idx, rows in map_batches(batches, compute, f"Caching layer {first} input"):
        for i, state in zip(idx, rows, strict=True):
            states[i] = state
    return BoundaryCache(first, states)  # type: ignore[arg-type]
