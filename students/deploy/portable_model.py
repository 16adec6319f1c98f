"""Whole students in their portable form: every trained QConv2d / QLinear swapped for its
scheme's ``portable`` module (``students.deploy.portable``).

Kept apart from ``portable.py`` because this side walks the quantized model (qlayers, schemes,
simulate), while the schemes themselves build their portable layers from ``portable.py``:
one file holding both would be an import circle.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from students.qlayers import QConv2d, QLinear
from students.schemes import schemes_with
from students.simulate import remove_simulation

from .errors import DeployError
from .portable import materialize


def is_low_bit(model: nn.Module) -> bool:
    """Whether ``model`` holds quantized (students.quantize) layers."""
    return any(isinstance(m, QConv2d | QLinear) for m in model.modules())


@torch.no_grad()
def portable_layer(layer: nn.Module, name: str = "") -> nn.Module:
    """One trained QConv2d / QLinear as its portable module: its scheme's ``portable``."""
    scheme = layer.scheme
    if not scheme.supports("portable"):
        raise DeployError(f"layer {name or type(layer).__name__!r} uses scheme {scheme.name!r}, which has no "
                          f"portable form; portable export supports {', '.join(schemes_with('portable'))}")
    return scheme.portable(layer)


@torch.no_grad()
def portable(model: nn.Module, storage: str = "int8") -> nn.Module:
    """An eval-mode copy of ``model`` with every quantized layer in its portable form; ``model`` is untouched.

    storage "int8": codes in the module (and the exported file); "float": the rebuilt fp32 weights."""
    if storage not in ("int8", "float"):
        raise DeployError(f"portable: storage must be 'int8' or 'float', got {storage!r}")
    model = copy.deepcopy(model).float().eval()
    remove_simulation(model)  # the portable form computes the trained layers' float eval forward
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, QConv2d | QLinear):
                new = portable_layer(child, f"{parent_name}.{name}".lstrip("."))
                setattr(parent, name, materialize(new) if storage == "float" else new)
    return model
