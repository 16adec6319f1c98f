"""How the 1- and 2-bit schemes become packed layers (their ``packed`` export target).

A QLinear, or a groups=1 QConv2d with zero padding, becomes the packed layer of its kind
(kernels.packed_layers) built from its quantized weight; a grouped / depthwise conv (the
packed convs are groups=1) becomes an fp32 conv with the dequantized weight, which is exactly
what it computed. BatchNorm folding and activation fusion come after, in students.deployed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kernels.packed_layers import PackedBinaryConv2d, PackedBinaryLinear, PackedTernaryConv2d, PackedTernaryLinear


def conv_config(conv: nn.Conv2d) -> dict[str, Any]:
    """The nn.Conv2d constructor arguments that rebuild ``conv``'s shape."""
    return {"in_channels": conv.in_channels, "out_channels": conv.out_channels,
            "kernel_size": conv.kernel_size, "stride": conv.stride, "padding": conv.padding,
            "dilation": conv.dilation, "groups": conv.groups, "bias": conv.bias is not None,
            "padding_mode": conv.padding_mode}  # fmt: skip


@torch.no_grad()
def packed_form(layer: nn.Module, ternary: bool, grouped: type[nn.Conv2d] = nn.Conv2d, **kwargs: Any) -> nn.Module:
    """``layer`` (a QConv2d / QLinear) on the packed kernels, in eval mode.

    ``kwargs`` go to the binary layers (binary_activations, act_scale); ``grouped`` is the fp
    conv class a grouped layer becomes (constructed with ``kwargs`` minus binary_activations).
    """
    w = layer.quantized_weight().float()
    if isinstance(layer, nn.Linear):
        cls = PackedTernaryLinear if ternary else PackedBinaryLinear
        return cls.from_float(w, layer.bias, **kwargs).eval()
    if layer.groups == 1 and layer.padding_mode == "zeros" and not isinstance(layer.padding, str):
        cls = PackedTernaryConv2d if ternary else PackedBinaryConv2d
        return cls.from_conv(layer, w, **kwargs).eval()
    extra = {k: v for k, v in kwargs.items() if k != "binary_activations"} if grouped is not nn.Conv2d else {}
    conv = grouped(**conv_config(layer), **extra)
    conv.weight.copy_(w)
    if layer.bias is not None:
        conv.bias.copy_(layer.bias)
    return conv.eval()
