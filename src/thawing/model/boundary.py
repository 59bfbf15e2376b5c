"""Run a backbone in two halves at a layer boundary: capture the hidden states entering layer `j`, and
run only layers `j..L-1` (plus the final norm) on given states.

Both halves reuse the model's own `forward`, so its attention masks and rotary position embeddings are built
exactly as usual: the top half swaps the layer stack for its top part and the embedding step for a
pass-through, then feeds the cached states in as `inputs_embeds`. `check_boundary` compares the split
forward with the whole one on a real batch; callers fall back to the plain path if they differ.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from thawing.model.encoder import Encoder, evaluating
from thawing.model.groups import find_layers


class _PassThrough(nn.Module):
    """Stands in for an embedding module that would transform `inputs_embeds` (BERT adds positions)."""

    # Takes whatever else the model passes its embedding module.
    def forward(self, *args, inputs_embeds: torch.Tensor | None = None, **kwargs) -> torch.Tensor:  # noqa: ARG002
        return inputs_embeds


class _Stop(Exception):
    pass


def _parent(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    *parents, attr = path.split(".")
    module = root
    for name in parents:
        module = getattr(module, name)
    return module, attr


@torch.no_grad()
def hidden_at(encoder: Encoder, first: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden states (B, T, H) entering layer `first`; the forward stops there (layers below only)."""
    _, layers = find_layers(encoder.backbone)
    captured: list[torch.Tensor] = []

    def grab(module, args, kwargs):  # noqa: ARG001 (a forward pre-hook's signature)
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _Stop

    handle = layers[first].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        encoder.backbone(input_ids=input_ids, attention_mask=attention_mask)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0]


@contextlib.contextmanager
def top_layers_only(encoder: Encoder, first: int) -> Iterator[None]:
    """Inside the block, `encoder.backbone(inputs_embeds=h, attention_mask=m)` runs layers `first..L-1` on h."""
    backbone = encoder.backbone
    path, layers = find_layers(backbone)
    parent, attr = _parent(backbone, path)
    embeddings = getattr(backbone, "embeddings", None)
    setattr(parent, attr, nn.ModuleList(list(layers)[first:]))
    if isinstance(embeddings, nn.Module):
        backbone.embeddings = _PassThrough()
    try:
        yield
    finally:
        setattr(parent, attr, layers)
        if isinstance(embeddings, nn.Module):
            backbone.embeddings = embeddings


def top_states(encoder: Encoder, first: int, hidden: torch.Tensor, attention_mask: torch.Tensor,
               lengths: list[int] | None = None) -> torch.Tensor:
    """Last hidden states (B, T, H) from layers `first..L-1` applied to `hidden` (`lengths`: see
    `Encoder.backbone_mask`)."""
    mask = encoder.backbone_mask(attention_mask, lengths)
    with top_layers_only(encoder, first):
        return encoder.backbone(inputs_embeds=hidden, attention_mask=mask).last_hidden_state


@torch.no_grad()
def check_boundary(encoder: Encoder, first: int, batch: dict[str, torch.Tensor]) -> float | None:
    """Max abs difference between split and whole forward on `batch` (eval mode), or None if the split fails."""
    with evaluating(encoder):
        return _difference(encoder, first, batch)


def _difference(encoder: Encoder, first: int, batch: dict[str, torch.Tensor]) -> float | None:
    try:
        # The padded forward, as training's top layers run (packing is the encoder's business, not the split's).
        whole = encoder.backbone(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state.float()
        hidden = hidden_at(encoder, first, batch["input_ids"], batch["attention_mask"])
        split = top_states(encoder, first, hidden, batch["attention_mask"]).float()
        mask = batch["attention_mask"].bool()
        return float((whole - split)[mask].abs().max())
    except Exception:  # noqa: BLE001 (an architecture whose forward cannot be split this way, whatever it raises)
        return None
