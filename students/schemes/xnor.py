"""XNOR-Net (Rastegari et al. 2016): binary weights with a scale per filter, binary inputs.

codes in {-1, +1}, alpha of shape (out,) per filter (mean |W|); Wq = alpha[o] * codes. The
input is binarized to sgn(x) in {-1, +1} (bit = x > 0) unless binarize_input=False (then:
BWN, binary weights on fp inputs); it is padded *before* binarizing (padded positions are -1),
and with act_scale=True (default) the output is multiplied by K = mean |x| over each
receptive field (XNOR-Net's K; per group, padded zeros counted), then + bias. Exports packed:
binary weights and binary activations (grouped convs as ``BinaryInputConv2d``, fp32).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from kernels import ste

from .base import Scheme, check_bools
from .packing import packed_form
from .registry import register_scheme


@register_scheme
@dataclasses.dataclass(frozen=True)
class Xnor(Scheme):
    binarize_input: bool = True
    act_scale: bool = True

    name = "xnor"
    weight_bits = 1
    codes = (-1, 1)

    def __post_init__(self) -> None:
        check_bools(self, "binarize_input", "act_scale")

    @property
    def input_bits(self) -> int | None:
        return 1 if self.binarize_input else None

    @property
    def packed_int8_input(self) -> bool:  # type: ignore[override]
        """Without binary inputs the packed layer rounds them to int8, as for binary-connect."""
        return not self.binarize_input

    def alpha(self, layer: nn.Module) -> Tensor:
        """The per-filter scale, shape (out,)."""
        return ste.xnor_alpha(layer.weight.detach()).flatten()

    def quantized_weight(self, layer: nn.Module, deterministic: bool = False) -> Tensor:
        return ste.xnor_weight(layer.weight)

    def forward(self, layer: nn.Module, x: Tensor) -> Tensor:
        """y = K * (sgn(x) (*) alpha sgn(W)) + b, every input of the binary op in {-1, +1}.

        The input is padded before it is binarized, so padded positions enter as sgn(0) = -1,
        as in a packed kernel that binarizes im2col rows of the zero-padded input. K (option
        act_scale) is the mean |x| over each receptive field, padded zeros included.
        """
        if not self.binarize_input:
            return super().forward(layer, x)
        x = layer.pad_input(x)
        out = layer.op(ste.binary_activation(x), self.quantized_weight(layer), None, padded=True)
        if self.act_scale:
            out = out * layer.input_scale(x)
        if layer.bias is not None:
            out = out + (layer.bias.view(-1, 1, 1) if isinstance(layer, nn.Conv2d) else layer.bias)
        return out

    def codes_and_scales(self, layer: nn.Module, w: Tensor) -> dict[str, Any]:
        return {"codes": ste.sgn(w).to(torch.int8), "alpha": self.alpha(layer)}

    def portable(self, layer: nn.Module) -> nn.Module:
        """alpha[o] * b as int8 codes and a per-filter scale; binarized inputs and K as ops before
        and after the conv (pad, where(x > 0, 1, -1), conv, times K), XNOR-Net's forward op for op."""
        from students.deploy.portable import coded_layer

        return coded_layer(layer, self.export_state(layer)["codes"], self.alpha(layer),
                           binary_input=self.binarize_input, act_scale=self.act_scale)

    def packed(self, layer: nn.Module) -> nn.Module:
        grouped = BinaryInputConv2d if self.binarize_input else nn.Conv2d
        return packed_form(layer, ternary=False, grouped=grouped, binary_activations=self.binarize_input,
                           act_scale=self.act_scale)


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
