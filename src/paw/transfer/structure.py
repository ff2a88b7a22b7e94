"""Where an adapter's modules live in a base model: decoder-layer index plus the path inside the layer.

All supported families (llama, qwen2, gemma2/3, mistral, ...) name a decoder layer's linears the same way
(`self_attn.q_proj`, `mlp.down_proj`, ...) under a `<prefix>.layers.<i>` list, so a module is matched across
bases by (layer, suffix) and the layer index is what the layer map changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from paw.errors import PawError

_LAYER = re.compile(r"^(?P<prefix>.*\.layers)\.(?P<index>\d+)\.(?P<suffix>.+)$")


@dataclass(frozen=True)
class LayerStructure:
    prefix: str  # e.g. "model.layers"
    num_layers: int

    def module_name(self, layer: int, suffix: str) -> str:
        return f"{self.prefix}.{layer}.{suffix}"

    def layer(self, model: nn.Module, index: int) -> nn.Module:
        return model.get_submodule(f"{self.prefix}.{index}")


def split_layer_name(name: str) -> tuple[int, str] | None:
    """"model.layers.3.self_attn.q_proj" -> (3, "self_attn.q_proj"); None outside decoder layers."""
    match = _LAYER.match(name)
    return (int(match["index"]), match["suffix"]) if match else None


def layer_structure(model: nn.Module) -> LayerStructure:
    """The model's decoder-layer list (the longest `*.layers` ModuleList)."""
    best: tuple[str, int] | None = None
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList):
            if best is None or len(module) > best[1]:
                best = (name, len(module))
    if best is None:
        raise PawError(
            f"{type(model).__name__} has no decoder-layer list (*.layers); PAW supports decoder-only HF causal "
            "LMs (llama, qwen2, gemma2/3, mistral, ...); pick such a base"
        )
    return LayerStructure(*best)


def linear_weight(model: nn.Module, name: str) -> torch.Tensor | None:
    """The (out, in) weight of linear module `name`, or None if the model has no such linear."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None
