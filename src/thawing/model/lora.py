"""LoRA adapters (peft) on the backbone's linear modules: a stage may train low-rank updates instead of, or beside,
whole layers.

    plan_adapters   config + plain model -> `AdapterPlan`: which modules of which layers, how many parameters; every
                    mistake (a target or layer this model lacks) is a ConfigError at plan time
    attach          peft's `LoraModel` on the backbone, in place; the adapters' initial values come from a seed of
                    their own (the global random state is left as it was, so a resumed run draws what the
                    uninterrupted one drew)
    detach          merge the adapters into the weights they adapt (or drop them) and remove them: every later
                    stage, checkpoint and `final/encoder` sees a plain model

While attached, an adapted module (`encoder.layer.4.attention.self.query`) holds the original `nn.Linear` as
`base_layer`, the very same parameters, and its adapter as `lora_A.<name>`/`lora_B.<name>`; `parameter_groups` puts
layer i's adapters in the group `lora:layers.i`. Merging writes into those same parameters, so the parameter groups
built before the stage stay valid after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from thawing.config import ALL_LINEAR, LoraSettings
from thawing.errors import ConfigError
from thawing.model.freezing import select_layers
from thawing.model.groups import find_layers

ADAPTER = "stage"  # peft's adapter name: one adapter at a time, merged before the next stage attaches its own

# Generic target names -> the module path inside one layer for each naming family (BERT, RoBERTa, MiniLM; Qwen2,
# Llama, Mistral; MPNet; DistilBERT). The path a layer has is used.
GENERIC_TARGETS = {
    "query": ("attention.self.query", "self_attn.q_proj", "attention.attn.q", "attention.q_lin"),
    "key": ("attention.self.key", "self_attn.k_proj", "attention.attn.k", "attention.k_lin"),
    "value": ("attention.self.value", "self_attn.v_proj", "attention.attn.v", "attention.v_lin"),
    "attention_output": ("attention.output.dense", "self_attn.o_proj", "attention.attn.o", "attention.out_lin"),
    "intermediate": ("intermediate.dense", "mlp.up_proj", "ffn.lin1"),
    "gate": ("mlp.gate_proj",),
    "output": ("output.dense", "mlp.down_proj", "ffn.lin2"),
}
ALIASES = {"up": "intermediate", "down": "output"}


@dataclass
class AdapterPlan:
    """A stage's adapters, resolved against the model: what `attach` injects and `thawing plan` shows."""

    r: int
    alpha: float
    dropout: float
    targets: list[str] | str  # as the config names them
    layers: list[int]  # adapted layer indices
    modules: list[str]  # module paths inside a layer (the same in every adapted layer)
    names: list[str]  # backbone-relative names of every adapted module
    params: dict[str, int]  # adapter group (lora:layers.i) -> parameter count

    @property
    def groups(self) -> list[str]:
        return list(self.params)

    def to_json(self) -> dict:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "targets": self.targets,
                "layers": [f"layers.{i}" for i in self.layers], "modules": self.modules,
                "params": sum(self.params.values())}


def group_name(layer: int) -> str:
    return f"lora:layers.{layer}"


def plan_adapters(settings: LoraSettings, backbone: nn.Module, groups: dict) -> AdapterPlan:
    """Resolve a stage's `lora` settings against the plain model.

    Raises:
        ConfigError: a layer selector that is not one or selects no layer, a target no selected layer has.
    """
    layer_path, stack = find_layers(backbone)
    try:
        layers = select_layers(settings.layers, groups)
    except ConfigError as exc:
        raise ConfigError(f"lora.layers: {exc}") from None
    modules: list[str] = []
    for index in layers:
        for path in layer_targets(settings.targets, stack[index], index):
            if path not in modules:
                modules.append(path)
    names, params = [], {}
    for index in layers:
        inside = dict(stack[index].named_modules())
        for path in modules:
            linear = inside.get(path)
            if not isinstance(linear, nn.Linear):  # a layer that differs from the others (rare)
                raise ConfigError(f"lora.targets: layers.{index} has no linear module '{path}' (the other adapted "
                                  "layers do); choose layers alike")
            names.append(f"{layer_path}.{index}.{path}")
            count = settings.r * (linear.in_features + linear.out_features)
            params[group_name(index)] = params.get(group_name(index), 0) + count
    return AdapterPlan(settings.r, settings.alpha, settings.dropout, settings.targets, layers, modules, names, params)


def layer_targets(targets: list[str] | str, layer: nn.Module, index: int) -> list[str]:
    """Module paths inside `layer` that `targets` name: generic names, the model's own names, or all-linear."""
    linear = [name for name, m in layer.named_modules() if isinstance(m, nn.Linear)]
    if targets == ALL_LINEAR:
        return linear
    out = []
    for target in targets:
        generic = GENERIC_TARGETS.get(ALIASES.get(target, target), ())
        own = [p for p in linear if p == target or p.endswith("." + target)]  # the model's own name
        found = [p for p in generic if p in linear][:1] or own
        if not found:
            known = ", ".join(list(GENERIC_TARGETS) + list(ALIASES))
            raise ConfigError(f"lora.targets: '{target}' names no linear module of layers.{index} "
                              f"({type(layer).__name__}); its linear modules: {', '.join(linear) or 'none'}; generic "
                              f"names: {known}; or '{ALL_LINEAR}'")
        out += [p for p in found if p not in out]
    return out


def attach(backbone: nn.Module, plan: AdapterPlan, seed: int):
    """Inject the plan's adapters into `backbone` in place; returns peft's tuner, which `detach` takes.

    lora_A starts from `seed` (peft's Kaiming init) and lora_B at zero, so the model computes what it did before; the
    global random state is forked around it and comes back unchanged."""
    from peft import LoraConfig, LoraModel

    config = LoraConfig(r=plan.r, lora_alpha=plan.alpha, lora_dropout=plan.dropout, bias="none",
                        target_modules="|".join(re.escape(name) for name in plan.names))  # exact full names
    device = next(backbone.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        tuner = LoraModel(backbone, config, ADAPTER)
    assert sorted(tuner.targeted_module_names) == sorted(plan.names), "peft adapted other modules than planned"
    return tuner


def detach(tuner, merge: bool = True) -> nn.Module:
    """Merge the adapters into the weights they adapt (or, `merge=False`, drop them) and put the plain modules back.
    Returns the backbone."""
    if not merge:
        return tuner.unload()
    backbone = tuner.merge_and_unload()
    for param in backbone.parameters():  # peft merges through `.data`, past autograd's version counters: bump them
        torch.autograd.graph.increment_version(param)  # (what `store.cache.fingerprint` knows a change by)
    return backbone
