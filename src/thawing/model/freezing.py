"""Which parameter groups train: selectors, freezing scenarios, and applying them to a model.

Selectors name groups (see `model/groups.py`):
    all            every group except `pooler`
    encoder        the backbone: embeddings, layers.*, norm (not the projection)
    heads          every head:<task>;   head:<task> one of them
    projection     the Dense projection;  embeddings, norm, pooler: those groups
    layers[a:b]    a Python slice of the layer stack (layers[-3:] = the top three); layers.5 one layer
    -<selector>    removes what the selector names (e.g. [all, -head:ner])
A slice that reaches the top layer also selects `norm`, the final norm that sits on top of it.
BERT's `pooler` is unused by sentence pooling, so only an explicit `pooler` selects it.
A stage's LoRA adapters are groups of their own, `lora:layers.i` (model/lora.py); no selector names them: a stage's
`lora` settings add them, and a layer with adapters counts as a layer that trains.
"""

from __future__ import annotations

import re
from collections import OrderedDict

from torch import nn

from thawing.errors import ConfigError

_SLICE = re.compile(r"^layers\[(-?\d*):(-?\d*)\]$")


def layer_names(groups: OrderedDict[str, list]) -> list[str]:
    return [g for g in groups if g.startswith("layers.")]


def select_groups(selectors: list[str], groups: OrderedDict[str, list]) -> list[str]:
    """Resolve selectors to group names, in model order.

    Raises:
        ConfigError: for an unknown selector, listing the valid forms, or a layer slice that selects no layer.
    """
    chosen: set[str] = set()
    for selector in selectors:
        negate = selector.startswith("-")
        names = _resolve(selector[1:] if negate else selector, groups)
        chosen = chosen - names if negate else chosen | names
    return [g for g in groups if g in chosen]


def select_layers(selectors: str | list[str], groups: OrderedDict[str, list]) -> list[int]:
    """Layer indices from layer selectors only: `layers[a:b]`, `layers.i`, `encoder` (every layer), `-` exclusions.
    (LoRA adapters go on layers: a selector that names other groups is refused rather than ignored.)

    Raises:
        ConfigError: a selector of another kind, or selectors that leave no layer.
    """
    selectors = [selectors] if isinstance(selectors, str) else list(selectors)
    for selector in selectors:
        plain = selector.removeprefix("-")
        if plain != "encoder" and not _SLICE.match(plain) and not re.fullmatch(r"layers\.\d+", plain):
            raise ConfigError(f"'{selector}' is not a layer selector: use layers[a:b] (layers[-6:] = the top six), "
                              "layers.i or encoder (every layer)")
    picked = set(select_groups(selectors, groups))
    layers = [int(name.split(".")[1]) for name in layer_names(groups) if name in picked]
    if not layers:
        raise ConfigError(f"{selectors} selects no layer of this model")
    return layers


def _resolve(selector: str, groups: OrderedDict[str, list]) -> set[str]:
    layers = layer_names(groups)
    encoder = {g for g in groups if g in ("embeddings", "norm") or g.startswith("layers.")}
    if selector == "all":
        return {g for g in groups if g != "pooler"}
    if selector == "encoder":
        return encoder
    if selector == "heads":
        return {g for g in groups if g.startswith("head:")}
    if selector in groups:
        return {selector}
    if (match := _SLICE.match(selector)) is not None:
        start, stop = (int(x) if x else None for x in match.groups())
        picked = set(layers[slice(start, stop)])
        if not picked:  # e.g. layers[10:12] on a 6-layer model: a stage that would silently train nothing there
            raise ConfigError(f"selector '{selector}' selects no layer: the model has {len(layers)} "
                              f"(layers.0 to layers.{len(layers) - 1}; layers[-2:] are the top two)")
        if layers and layers[-1] in picked and "norm" in groups:
            picked.add("norm")
        return picked
    if selector == "projection":  # a model without a projection simply has nothing to select
        return set()
    valid = ["all", "encoder", "heads", "projection", "layers[a:b]"] + list(groups)
    raise ConfigError(f"unknown parameter group selector '{selector}'; valid: {', '.join(valid)}")


def apply_trainable(groups: OrderedDict[str, list], trainable: list[str]) -> None:
    """Set `requires_grad` so that exactly the parameters of `trainable` groups learn."""
    wanted = set(trainable)
    for name, members in groups.items():
        for _, param in members:
            param.requires_grad_(name in wanted)


def set_frozen_modes(model: nn.Module, trainable: list[str]) -> None:
    """Put frozen parts in eval mode (no dropout), after `model.train()`.

    A frozen part then computes a pure function of its input, which is what makes it cacheable,
    and what keeps cached and uncached training identical.
    """
    from thawing.model.groups import find_layers

    wanted = set(trainable)
    backbone = model.encoder.backbone
    layer_path, layers = find_layers(backbone)
    for index, layer in enumerate(layers):
        if f"layers.{index}" not in wanted and f"lora:layers.{index}" not in wanted:  # adapters: the layer trains
            layer.eval()
    if "embeddings" not in wanted:
        for name, module in backbone.named_modules():
            inside_or_above_layers = name.startswith(layer_path) or layer_path.startswith(name + ".") or not name
            if not inside_or_above_layers:
                module.eval()
    if model.encoder.projection is not None and "projection" not in wanted:
        model.encoder.projection.eval()
    for task, head in model.heads.items():
        if f"head:{task}" not in wanted:
            head.eval()


def encoder_frozen(trainable: list[str]) -> bool:
    """True when nothing below the heads trains, so pooled embeddings can be computed once."""
    return not any(not g.startswith("head:") for g in trainable)


def trains_encoder(trainable: list[str]) -> bool:
    """True when a group of the backbone trains (embeddings, a layer, the final norm, a layer's LoRA adapters)."""
    return any(g == "embeddings" or g == "norm" or g.startswith(("layers.", "lora:")) for g in trainable)


def active_tasks(specs: dict, trainable: list[str]) -> list[str]:
    """Tasks whose loss reaches a trainable parameter (their head, the backbone, or the projection for tasks that read
    the pooled embedding); the others would only cost time."""
    wanted = set(trainable)
    return [t for t, spec in specs.items()
            if f"head:{t}" in wanted or trains_encoder(trainable)
            or (spec.kind.reads in ("sentence", "pairs") and "projection" in wanted)]


def parameter_table(groups: OrderedDict[str, list], trainable: list[str]) -> list[dict]:
    """Rows of (group, parameter count, trainable) for the log and `thawing plan`."""
    wanted = set(trainable)
    return [
        {"group": name, "params": sum(p.numel() for _, p in members), "trainable": name in wanted}
        for name, members in groups.items()
    ]
