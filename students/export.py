"""Export a trained ternary/binary student to a deployable module on the packed kernels.

    deployed = export(qmodel)                       # eval-mode module, packed layers inside
    save_exported(deployed, "student.pt", arch={"name": "mobilenet_v2", "num_classes": 10})
    deployed = load_exported("student.pt")

What ``export(model, "packed")`` does to a model trained with ``quantize(model, scheme)``
(scheme twn, ttq, binary-connect or xnor), on a deep copy in eval mode:

- a QConv2d (groups=1) / QLinear becomes a packed layer (kernels.packed_layers) built
  from ``quantized_weight()``: ternary for twn/ttq, binary with int8 activations for
  binary-connect, binary with binary activations for xnor (``binarize_input``). Layers
  trained on fp activations (twn, ttq, binary-connect) now see int8 activations,
  quantized per row (one row per output pixel of a conv): the one approximation here.
  ``students.simulate_export`` puts that rounding (and the BN folding, and the exact integer
  sums) into the trained model's own forward, so that it computes what the export deploys.
- a BatchNorm right after a conv/linear in an nn.Sequential (the zoo's conv-bn-act
  blocks) is folded into that layer (packed: its per-channel scales and bias; fp:
  its weight and bias, torch.nn.utils.fusion) and replaced by nn.Identity. A BN we
  cannot pair that way stays, in eval mode: still correct, only slower. A ReLU / ReLU6
  right after a packed layer (and its BN) is fused into the kernel's epilogue.
- grouped/depthwise QConv2d layers (the packed convs are groups=1) become fp32
  nn.Conv2d with the dequantized weight, which is exactly what they computed;
  xnor ones become ``BinaryInputConv2d`` (sign of the input, XNOR-Net's K).
- full-precision layers (``keep_first`` / ``keep_last``, skip_depthwise) stay fp32.
- fp conv weights are made channels-last: the packed convs' output layout.

``format="export"`` / ``"torchscript"`` run ``torch.export.export`` (dynamic batch) /
``torch.jit.trace`` on that module (they need ``example_input``; the packed ops must be
registered, i.e. ``import kernels.ops``, before loading such a file).

One file: ``save_exported`` writes ``kernels.packed_layers.save_packed``'s format with,
as its ``arch``, the ``students.create_model`` arguments plus every fp conv/linear/identity
that export put in place; ``load_exported`` rebuilds that skeleton and loads the state
(``weights_only=True``). Non-zoo models pass ``build(arch)`` to make their float skeleton.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kernels.packed_layers import load_packed, save_packed

from .deployed import deployed_children
from .qlayers import QConv2d, QLinear
from .registry import create_model
from .schemes import schemes_with
from .schemes.packing import conv_config
from .schemes.xnor import BinaryInputConv2d
from .simulate import remove_simulation

__all__ = [
    "BinaryInputConv2d",
    "export",
    "load_exported",
    "save_exported",
]

FORMATS = ("packed", "export", "torchscript")


def export(model: nn.Module, format: str = "packed", *, example_input: Tensor | None = None) -> nn.Module | Any:
    """A deployable eval-mode copy of ``model`` (see the module docstring); ``model`` is untouched.

    format: "packed" (an nn.Module), "export" (a torch.export ExportedProgram) or
    "torchscript" (a traced ScriptModule); the last two need ``example_input``.
    Raises ValueError for other formats and for layers of a scheme that has no packed form.
    """
    if format not in FORMATS:
        raise ValueError(f"export: unknown format {format!r}; choose one of {list(FORMATS)}")
    if format != "packed" and example_input is None:
        raise ValueError(f"export: format {format!r} needs example_input (a batch the model accepts)")
    deployed = _to_packed(model)
    if format == "export":  # the batch dimension stays dynamic
        batch = torch.export.Dim("batch", min=1)
        return torch.export.export(deployed, (example_input,), dynamic_shapes=({0: batch},))
    if format == "torchscript":
        with torch.no_grad():
            return torch.jit.trace(deployed, example_input)
    return deployed


@torch.no_grad()
def _to_packed(model: nn.Module) -> nn.Module:
    for name, m in model.named_modules():
        if isinstance(m, QConv2d | QLinear) and not m.scheme.supports("packed"):
            raise ValueError(
                f"export: layer {name!r} uses scheme {m.scheme.name!r}, which has no packed form"
                f"{m.scheme.no_packed_hint}; packed export supports {', '.join(schemes_with('packed'))}"
            )
    model = copy.deepcopy(model).float().eval()
    remove_simulation(model)  # the copy runs as deployed, not as simulated
    uses = Counter(id(c) for m in model.modules() for c in m._modules.values() if c is not None)
    done: dict[int, nn.Module] = {}  # id(shared layer) -> its one conversion
    for parent in list(model.modules()):
        for name, new in deployed_children(parent, lambda layer: uses[id(layer)] > 1, done).items():
            setattr(parent, name, new)
    # Packed convs return channels-last tensors; fp convs with channels-last weights keep
    # the whole net in that layout (no NCHW <-> NHWC copies, and oneDNN is faster in it).
    return model.to(memory_format=torch.channels_last).eval()


# ---------------------------------------------------------------- one file


def _module_spec(m: nn.Module) -> dict[str, Any] | None:
    """Plain-data spec of a module export may have put in place (None: not one of those)."""
    if type(m) is nn.Identity:
        return {"kind": "identity"}
    if type(m) is nn.Linear:
        return {"kind": "linear", "config": {"in_features": m.in_features, "out_features": m.out_features,
                                             "bias": m.bias is not None}}  # fmt: skip
    if type(m) is nn.Conv2d:
        return {"kind": "conv2d", "config": conv_config(m)}
    if type(m) is BinaryInputConv2d:
        return {"kind": "binary_input_conv2d", "config": {**conv_config(m), "act_scale": m.act_scale}}
    return None


_MAKERS: dict[str, Callable[..., nn.Module]] = {
    "identity": nn.Identity, "linear": nn.Linear, "conv2d": nn.Conv2d,
    "binary_input_conv2d": BinaryInputConv2d,
}  # fmt: skip


def save_exported(model: nn.Module, path: str | Path, arch: dict[str, Any] | None = None) -> None:
    """Write an exported model to one file.

    ``arch``: the ``students.create_model`` keyword arguments of its architecture, e.g.
    {"name": "mobilenet_v2", "num_classes": 10, "in_chans": 1, "variant": "cifar",
    "width_mult": 0.25}; None when ``load_exported`` will get a ``build`` instead.
    """
    modules = {name: spec for name, m in model.named_modules() if name and (spec := _module_spec(m))}
    save_packed(model, path, arch={"model": arch, "modules": modules})


def load_exported(path: str | Path, build: Callable[[dict[str, Any] | None], nn.Module] | None = None) -> nn.Module:
    """Load a file from ``save_exported``, in eval mode.

    ``build(arch)`` makes the float model the student was trained from (default:
    ``students.create_model(**arch)``); export's fp layers and packed layers are then
    put in place and the saved state loaded (strict).
    """

    def skeleton(blob_arch: dict[str, Any] | None) -> nn.Module:
        if not isinstance(blob_arch, dict) or "modules" not in blob_arch:
            raise ValueError(f"{path}: not a file written by students.save_exported")
        arch = blob_arch["model"]
        if build is None and not isinstance(arch, dict):
            raise ValueError(f"{path}: saved without arch; pass build= to make the model skeleton")
        model = build(arch) if build is not None else create_model(**arch)
        for name, spec in blob_arch["modules"].items():
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child,
                    _MAKERS[spec["kind"]](**spec.get("config", {})))  # fmt: skip
        return model

    return load_packed(path, build=skeleton).to(memory_format=torch.channels_last).eval()
