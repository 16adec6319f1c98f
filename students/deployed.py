"""What export puts in place of a model's layers: ``deployed_children``.

Both ``students.export`` (which converts a copy of the model once) and ``students.simulate``
(which swaps these modules in for each eval forward of the trained model) build on it, so the
two cannot compute different things. Each quantized layer becomes its scheme's ``packed``
form; a BatchNorm after it is folded in and a ReLU / ReLU6 fused into a packed layer's epilogue.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from kernels.packed_layers import PACKED_LAYERS, fold_batchnorm, fuse_activation

from .qlayers import QConv2d, QLinear

__all__ = ["FUSED_ACTIVATIONS", "PACKED", "deployed_children", "is_layer"]

FUSED_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
PACKED = tuple(PACKED_LAYERS.values())


def is_layer(m: nn.Module | None) -> bool:
    """A conv / linear layer export converts: a quantized one or a plain fp32 one (exact type)."""
    return isinstance(m, QConv2d | QLinear) or type(m) in (nn.Conv2d, nn.Linear)


def deployed_children(parent: nn.Module, shared: Callable[[nn.Module], bool],
                      done: dict[int, nn.Module] | None = None) -> dict[str, nn.Module]:
    """What export puts in place of ``parent``'s direct children: {child name: new module}.

    Every conv/linear child is converted (``_convert``); inside an nn.Sequential a BatchNorm
    right after it is folded in (and becomes nn.Identity), and a ReLU / ReLU6 after a packed
    layer is fused into it (and becomes nn.Identity). A ``shared(layer)`` layer (registered
    twice) is converted once (``done``: id -> conversion) and gets nothing folded. ``parent``
    and its children are not modified.
    """
    done = {} if done is None else done
    out: dict[str, nn.Module] = {}
    names = list(parent._modules)
    for i, name in enumerate(names):
        layer = parent._modules[name]
        if not is_layer(layer):
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


def _folds(layer: nn.Module, bn: nn.Module | None) -> bool:
    """True when ``bn`` is an eval-foldable BatchNorm over ``layer``'s outputs."""
    want = nn.BatchNorm2d if isinstance(layer, nn.Conv2d) else nn.BatchNorm1d
    if type(bn) is not want or bn.running_mean is None:
        return False
    out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    return bn.num_features == out


def _convert(layer: nn.Module, bn: nn.BatchNorm2d | nn.BatchNorm1d | None) -> nn.Module:
    new = layer.scheme.packed(layer) if isinstance(layer, QConv2d | QLinear) else layer
    if isinstance(new, PACKED):
        return (new if bn is None else fold_batchnorm(new, bn)).eval()
    if bn is None:
        return new
    return fuse_conv_bn_eval(new, bn) if isinstance(new, nn.Conv2d) else fuse_linear_bn_eval(new, bn)
