"""Named parameter groups: the unit of freezing and of learning rates.

An encoder splits into `embeddings`, `layers.0` ... `layers.{L-1}`, `norm` (a final norm, where the
architecture has one), `pooler` (BERT's unused pooler head, kept apart so it is never mistaken for a
layer) and `projection` (Dense modules). A multi-task model adds `head:<task>`; while a stage's LoRA
adapters are attached (model/lora.py), `lora:layers.i` holds layer i's. Every parameter is in exactly
one group, and `parameter_groups` asserts it.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

# Attribute paths of the layer stack in the architectures we know; others are found by shape.
_LAYER_PATHS = ("encoder.layer", "layers", "encoder.layers", "h", "transformer.layer", "block", "encoder.block")


def find_layers(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """The backbone's stack of transformer layers and its attribute path.

    Known paths are tried first; otherwise the longest `nn.ModuleList` of same-typed blocks wins.
    """
    modules = dict(backbone.named_modules())
    for path in _LAYER_PATHS:
        if isinstance(modules.get(path), nn.ModuleList):
            return path, modules[path]
    candidates = [
        (len(m), name, m)
        for name, m in modules.items()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1
    ]
    if not candidates:
        raise ValueError(f"cannot find the layer stack of {type(backbone).__name__}")
    _, name, layers = max(candidates, key=lambda c: c[0])
    return name, layers


def num_layers(backbone: nn.Module) -> int:
    return len(find_layers(backbone)[1])


def _backbone_group(name: str, layer_path: str, after_layers: bool) -> str:
    if name.startswith(layer_path + "."):
        index = name[len(layer_path) + 1 :].split(".", 1)[0]
        # A LoRA adapter (peft: `...query.lora_A.<adapter>.weight`) is its own group: it trains while its layer's
        # weights (`...query.base_layer.weight`) stay as they are.
        return f"lora:layers.{index}" if ".lora_" in name else f"layers.{index}"
    if "pooler" in name:
        return "pooler"
    # A norm registered after the layer stack is the final norm (Qwen2 `norm`, GPT `ln_f`).
    if after_layers and ("norm" in name.lower() or name.startswith("ln_f")):
        return "norm"
    return "embeddings"


def parameter_groups(model: nn.Module) -> OrderedDict[str, list[tuple[str, nn.Parameter]]]:
    """Split an `Encoder`, or a model holding one as `.encoder` plus `.heads`, into named groups.

    Returns:
        group name -> [(full parameter name, parameter)], in order from embeddings up to heads.
    """
    encoder = getattr(model, "encoder", model)
    prefix = "encoder." if encoder is not model else ""
    layer_path, layers = find_layers(encoder.backbone)
    groups: OrderedDict[str, list] = OrderedDict(
        [("embeddings", [])] + [(f"layers.{i}", []) for i in range(len(layers))]
    )
    seen_layers = False
    for name, param in encoder.backbone.named_parameters():
        group = _backbone_group(name, layer_path, seen_layers)
        seen_layers = seen_layers or group.startswith("layers.")
        groups.setdefault(group, []).append((f"{prefix}backbone.{name}", param))
    if encoder.projection is not None:
        groups["projection"] = [(f"{prefix}projection.{n}", p) for n, p in encoder.projection.named_parameters()]
    for task, head in getattr(model, "heads", {}).items():
        groups[f"head:{task}"] = [(f"heads.{task}.{n}", p) for n, p in head.named_parameters()]

    grouped = [id(p) for members in groups.values() for _, p in members]
    everything = [id(p) for p in model.parameters()]
    assert len(grouped) == len(set(grouped)) and set(grouped) == set(everything), (
        "parameter groups must partition the model"
    )
    return OrderedDict((k, v) for k, v in groups.items() if v)
