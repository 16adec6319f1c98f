"""Ternary and binary students in a form every runtime loads: standard ops, int8 weight codes.

A trained TWN / BinaryConnect / XNOR / TTQ layer's eval weight is a code per weight times a
scale (``export_state``): TWN ``alpha * t`` (t in {-1, 0, 1}), BinaryConnect ``H * b`` and XNOR
``alpha[o] * b`` (b in {-1, 1}), TTQ ``+Wp`` where t = 1 and ``-Wn`` where t = -1. Stored here as

- one int8 code tensor plus a per-output-channel scale, rebuilt by ``dequantize_per_channel``
  (ONNX ``DequantizeLinear``: (code - 0) * scale) when the positive and negative scales are
  equal (TWN, BinaryConnect, XNOR). The product of a code in {-1, 0, 1} and a float is exact,
  so the rebuilt weight equals the trained layer's eval weight bit for bit;
- TTQ, whose two scales differ (Wp != Wn, and their ratio is no ratio of small integers in
  general, so no single int8 scale is exact): the same int8 codes and two scales, rebuilt as
  ``where(t > 0, Wp, where(t < 0, -Wn, 0))``, a selection with no arithmetic: exact too.

XNOR's binary activations are ops before the conv: pad, ``where(x > 0, 1, -1)`` (sgn(0) = -1,
padded positions enter as -1, as in training), the conv, times K = mean |x| over each receptive
field (a conv of |x| with a constant box), plus the bias: XNOR-Net's forward, op for op.

The runtime then computes in fp32 with those exact weights: its sums may round differently
from PyTorch's (a different order of additions), the only difference from the validated student.

``storage="int8"`` keeps the codes in the file (ONNX: DequantizeLinear on int8 initializers);
``storage="float"`` writes the rebuilt fp32 weights instead (same values), for runtimes whose
fast path needs float weights: XNNPACK delegates no conv whose fp32 input meets a dequantized
weight, and ExecuTorch would run those on its portable kernels.
"""

from __future__ import annotations

import copy

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers torch.ops.quantized_decomposed
from torch import Tensor, nn
from torch.nn import functional as F

from kernels import ste


class CodedWeight(nn.Module):
    """An int8 code tensor and its scales; ``forward()`` is the float weight they stand for."""

    def __init__(self, codes: Tensor, pos: Tensor, neg: Tensor | None) -> None:
        super().__init__()
        out = codes.shape[0]
        self.register_buffer("codes", codes.to(torch.int8).contiguous())
        self.register_buffer("pos", pos.float().reshape(-1).expand(out).contiguous())
        self.register_buffer("neg", None if neg is None else neg.float().reshape(-1).expand(out).contiguous())

    def forward(self) -> Tensor:
        if self.neg is None:
            zero = torch.zeros(self.codes.shape[0], dtype=torch.int64, device=self.codes.device)
            return torch.ops.quantized_decomposed.dequantize_per_channel(
                self.codes, self.pos, zero, 0, -127, 127, torch.int8)
        shape = (-1,) + (1,) * (self.codes.dim() - 1)
        return torch.where(self.codes > 0, self.pos.view(shape),
                           torch.where(self.codes < 0, -self.neg.view(shape), torch.zeros((), device=self.pos.device)))


class PortableConv2d(nn.Module):
    """A conv whose weight is ``CodedWeight``; with ``binary_input``, XNOR's binarized input and K."""

    def __init__(self, conv: nn.Conv2d, weight: CodedWeight, binary_input: bool, act_scale: bool) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.kernel_size, self.out_channels = conv.kernel_size, conv.out_channels
        self.pads = conv._reversed_padding_repeated_twice
        self.binary_input, self.act_scale = binary_input, act_scale
        self.weight_codes = weight
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone().float())

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight_codes()
        if not self.binary_input:
            return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        x = F.pad(x, self.pads) if any(self.pads) else x
        out = F.conv2d(ste.sgn(x), w, None, self.stride, 0, self.dilation, self.groups)
        if self.act_scale:
            k = ste.xnor_input_scale(x, self.kernel_size, self.stride, self.dilation, self.groups)
            out = out * (k.repeat_interleave(self.out_channels // self.groups, dim=1) if self.groups > 1 else k)
        return out if self.bias is None else out + self.bias.view(-1, 1, 1)


class PortableLinear(nn.Module):
    """A linear layer whose weight is ``CodedWeight``; with ``binary_input``, XNOR's sgn(x) and K."""

    def __init__(self, linear: nn.Linear, weight: CodedWeight, binary_input: bool, act_scale: bool) -> None:
        super().__init__()
        self.binary_input, self.act_scale = binary_input, act_scale
        self.weight_codes = weight
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone().float())

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight_codes()
        if not self.binary_input:
            return F.linear(x, w, self.bias)
        out = F.linear(ste.sgn(x), w, None)
        if self.act_scale:
            out = out * x.abs().mean(dim=-1, keepdim=True)
        return out if self.bias is None else out + self.bias


def coded_layer(layer: nn.Module, codes: Tensor, pos: Tensor, neg: Tensor | None = None, *,
                binary_input: bool = False, act_scale: bool = True) -> nn.Module:
    """The portable module of a trained conv / linear ``layer`` whose eval weight is ``codes`` times
    ``pos`` (one scale or one per output channel), or ``+pos`` / ``-neg`` by the sign of the code
    (``neg`` given: TTQ); ``binary_input``: XNOR's binarized input (and K with ``act_scale``).
    The schemes' ``portable`` methods call this."""
    weight = CodedWeight(codes, torch.as_tensor(pos).detach(), None if neg is None else torch.as_tensor(neg).detach())
    cls = PortableConv2d if isinstance(layer, nn.Conv2d) else PortableLinear
    return cls(layer, weight, binary_input, act_scale).eval()


@torch.no_grad()
def materialize(layer: nn.Module) -> nn.Module:
    """A portable layer with its weight rebuilt in fp32 (a plain nn.Conv2d / nn.Linear without XNOR input)."""
    w = layer.weight_codes()
    if not layer.binary_input:
        if isinstance(layer, PortableConv2d):
            out, cin = w.shape[0], w.shape[1] * layer.groups
            plain: nn.Module = nn.Conv2d(cin, out, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                         layer.groups, bias=layer.bias is not None)
        else:
            plain = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None)
        plain.weight.copy_(w)
        if layer.bias is not None:
            plain.bias.copy_(layer.bias)
        return plain.eval()
    layer = copy.deepcopy(layer)
    layer.weight_codes = FloatWeight(w)
    return layer


class FloatWeight(nn.Module):
    """A rebuilt weight kept in fp32, in ``CodedWeight``'s place."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(w.detach().clone(), requires_grad=False)

    def forward(self) -> Tensor:
        return self.weight
