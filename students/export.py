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
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from kernels import ste
from kernels.packed_layers import (
    PACKED_LAYERS,
    PackedBinaryConv2d,
    PackedBinaryLinear,
    PackedTernaryConv2d,
    PackedTernaryLinear,
    fold_batchnorm,
    fuse_activation,
    load_packed,
    save_packed,
)

from .qlayers import QConv2d, QLinear
from .registry import create_model

__all__ = [
    "EXPORT_SCHEMES",
    "BinaryInputConv2d",
    "export",
    "load_exported",
    "deployed_children",
    "save_exported",
]

EXPORT_SCHEMES = ("twn", "ttq", "binary-connect", "xnor")
FORMATS = ("packed", "export", "torchscript")
FUSED_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
PACKED = tuple(PACKED_LAYERS.values())


class BinaryInputConv2d(nn.Conv2d):
    """A grouped XNOR conv kept in fp32: K * conv(sgn(pad(x)), W) + bias.

    The packed XNOR kernels are groups=1 only, so depthwise xnor layers run this;
    it is QConv2d's eval forward without the latent weight (sgn(x) = +1 if x > 0
    else -1, padded positions enter as -1, K = mean |x| per receptive field and group).
    """

    def __init__(self, *args: Any, act_scale: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.act_scale = act_scale

    def forward(self, x: Tensor) -> Tensor:
        pads = self._reversed_padding_repeated_twice
        x = nn.functional.pad(x, pads) if any(pads) else x
        out = nn.functional.conv2d(ste.sgn(x), self.weight, None, self.stride, 0, self.dilation, self.groups)
        if self.act_scale:
            k = ste.xnor_input_scale(x, self.kernel_size, self.stride, self.dilation, self.groups)
            out = out * k.repeat_interleave(self.out_channels // self.groups, dim=1)
        return out if self.bias is None else out + self.bias.view(-1, 1, 1)


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
        if isinstance(m, QConv2d | QLinear) and m.scheme not in EXPORT_SCHEMES:
            hint = " (use students.convert_int8)" if m.scheme == "int8" else ""
            raise ValueError(
                f"export: layer {name!r} uses scheme {m.scheme!r}, which has no packed form{hint}; "
                f"packed export supports {', '.join(EXPORT_SCHEMES)}"
            )
    model = copy.deepcopy(model).float().eval()
    from .simulate import remove_simulation  # the copy runs as deployed, not as simulated

    remove_simulation(model)
    uses = Counter(id(c) for m in model.modules() for c in m._modules.values() if c is not None)
    done: dict[int, nn.Module] = {}  # id(shared layer) -> its one conversion
    for parent in list(model.modules()):
        for name, new in deployed_children(parent, lambda layer: uses[id(layer)] > 1, done).items():
            setattr(parent, name, new)
    # Packed convs return channels-last tensors; fp convs with channels-last weights keep
    # the whole net in that layout (no NCHW <-> NHWC copies, and oneDNN is faster in it).
    return model.to(memory_format=torch.channels_last).eval()


def deployed_children(parent: nn.Module, shared: Callable[[nn.Module], bool],
                      done: dict[int, nn.Module] | None = None) -> dict[str, nn.Module]:
    """What export puts in place of ``parent``'s direct children: {child name: new module}.

    Every conv/linear child is converted (``_convert``); inside an nn.Sequential a BatchNorm
    right after it is folded in (and becomes nn.Identity), and a ReLU / ReLU6 after a packed
    layer is fused into it (and becomes nn.Identity). A ``shared(layer)`` layer (registered
    twice) is converted once (``done``: id -> conversion) and gets nothing folded. ``parent``
    and its children are not modified; ``students.simulate`` builds its eval view from this too.
    """
    done = {} if done is None else done
    out: dict[str, nn.Module] = {}
    names = list(parent._modules)
    for i, name in enumerate(names):
        layer = parent._modules[name]
        if not _is_layer(layer):
            continue
        if shared(layer):
            if id(layer) not in done:
                done[id(layer)] = _convert(layer, None)
            out[name] = done[id(layer)]
            continue
        # Only inside a Sequential is the next module the one that consumes the output.
        after = names[i + 1 : i + 3] if isinstance(parent, nn.Sequential) else []
        bn = parent._modules[after[0]] if after and _folds(layer, parent._modules[after[0]]) else None
        new = out[name] = _convert(layer, bn)
        if bn is not None:
            out[after.pop(0)] = nn.Identity()
        act = parent._modules[after[0]] if after else None
        if isinstance(new, PACKED) and type(act) in FUSED_ACTIVATIONS:
            out[after[0]] = nn.Identity()
            fuse_activation(new, act)
    return out


def _is_layer(m: nn.Module | None) -> bool:
    return isinstance(m, QConv2d | QLinear) or type(m) in (nn.Conv2d, nn.Linear)


def _folds(layer: nn.Module, bn: nn.Module | None) -> bool:
    """True when ``bn`` is an eval-foldable BatchNorm over ``layer``'s outputs."""
    want = nn.BatchNorm2d if isinstance(layer, nn.Conv2d) else nn.BatchNorm1d
    if type(bn) is not want or bn.running_mean is None:
        return False
    out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    return bn.num_features == out


def _convert(layer: nn.Module, bn: nn.BatchNorm2d | nn.BatchNorm1d | None) -> nn.Module:
    if not isinstance(layer, QConv2d | QLinear):
        return _fuse(layer, bn)
    w, scheme, opts = layer.quantized_weight().float(), layer.scheme, layer.options
    ternary = scheme in ("twn", "ttq")
    xnor = scheme == "xnor" and opts["binarize_input"]
    binary_kw = {} if ternary else {"binary_activations": xnor, "act_scale": opts.get("act_scale", True)}
    if isinstance(layer, QLinear):
        cls = PackedTernaryLinear if ternary else PackedBinaryLinear
        packed = cls.from_float(w, layer.bias, **binary_kw)
    elif layer.groups == 1 and layer.padding_mode == "zeros" and not isinstance(layer.padding, str):
        cls = PackedTernaryConv2d if ternary else PackedBinaryConv2d
        packed = cls.from_conv(layer, w, **binary_kw)
    else:  # grouped / depthwise: fp32 with the dequantized weight
        cls = BinaryInputConv2d if xnor else nn.Conv2d
        extra = {"act_scale": opts["act_scale"]} if xnor else {}
        conv = cls(**_conv_config(layer), **extra)
        conv.weight.copy_(w)
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
        return _fuse(conv.eval(), bn)
    return (packed if bn is None else fold_batchnorm(packed, bn)).eval()


def _fuse(layer: nn.Module, bn: nn.Module | None) -> nn.Module:
    if bn is None:
        return layer
    return fuse_conv_bn_eval(layer, bn) if isinstance(layer, nn.Conv2d) else fuse_linear_bn_eval(layer, bn)


def _conv_config(conv: nn.Conv2d) -> dict[str, Any]:
    return {"in_channels": conv.in_channels, "out_channels": conv.out_channels,
            "kernel_size": conv.kernel_size, "stride": conv.stride, "padding": conv.padding,
            "dilation": conv.dilation, "groups": conv.groups, "bias": conv.bias is not None,
            "padding_mode": conv.padding_mode}  # fmt: skip


# ---------------------------------------------------------------- one file


def _module_spec(m: nn.Module) -> dict[str, Any] | None:
    """Plain-data spec of a module export may have put in place (None: not one of those)."""
    if type(m) is nn.Identity:
        return {"kind": "identity"}
    if type(m) is nn.Linear:
        return {"kind": "linear", "config": {"in_features": m.in_features, "out_features": m.out_features,
                                             "bias": m.bias is not None}}  # fmt: skip
    if type(m) is nn.Conv2d:
        return {"kind": "conv2d", "config": _conv_config(m)}
    if type(m) is BinaryInputConv2d:
        return {"kind": "binary_input_conv2d", "config": {**_conv_config(m), "act_scale": m.act_scale}}
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
