"""Ternary Weight Networks (Li & Liu 2016): weights in {-alpha, 0, +alpha}, fp activations.

codes in {-1, 0, +1}, threshold delta = threshold_factor * mean |W| (0.7), alpha (scalar) the
mean |W| above it; Wq = alpha * codes. Exports packed: ternary weights, int8 activations.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor, nn

from kernels import ste

from .base import Scheme, is_number_in
from .packing import packed_form
from .registry import register_scheme


@register_scheme
@dataclasses.dataclass(frozen=True)
class Twn(Scheme):
    threshold_factor: float = 0.7

    name = "twn"
    weight_bits = 2
    codes = (-1, 0, 1)
    packed_int8_input = True

    def __post_init__(self) -> None:
        if not is_number_in(self.threshold_factor, 0, 10):
            raise ValueError(f"option 'threshold_factor' must be a number in (0, 10), got {self.threshold_factor!r}")

    def threshold(self, layer: nn.Module) -> Tensor:
        """delta = threshold_factor * mean |W|."""
        return ste.twn_threshold(layer.weight, self.threshold_factor)

    def alpha(self, layer: nn.Module) -> Tensor:
        return ste.twn_alpha(layer.weight.detach(), self.threshold(layer))

    def quantized_weight(self, layer: nn.Module, deterministic: bool = False) -> Tensor:
        return ste.twn_weight(layer.weight, self.threshold_factor)

    def codes_and_scales(self, layer: nn.Module, w: Tensor) -> dict[str, Any]:
        delta = self.threshold(layer)
        return {"codes": ste.ternary_codes(w, delta), "alpha": self.alpha(layer), "threshold": delta}

    def portable(self, layer: nn.Module) -> nn.Module:
        """alpha * t: int8 codes t and one scale (ONNX DequantizeLinear), exact."""
        from students.deploy.portable import coded_layer

        return coded_layer(layer, self.export_state(layer)["codes"], self.alpha(layer))

    def packed(self, layer: nn.Module) -> nn.Module:
        return packed_form(layer, ternary=True)
