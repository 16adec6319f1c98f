"""DoReFa-Net (Zhou et al. 2016): k-bit weights and k-bit activations.

codes in 0..2^k-1 (uint8), k = bits; Wq = 2 * codes / (2^k - 1) - 1. The input is clip(x, 0, 1)
quantized to act_bits levels (act_bits=None: the same as bits; 32: fp activations). No packed
form: the packed kernels are 1- and 2-bit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor, nn

from kernels import ste

from .base import Scheme
from .registry import register_scheme


@register_scheme
@dataclasses.dataclass(frozen=True)
class Dorefa(Scheme):
    bits: int = 4
    act_bits: int | None = None

    name = "dorefa"

    def __post_init__(self) -> None:
        if self.act_bits is None:
            object.__setattr__(self, "act_bits", self.bits)
        for name, k in (("bits", self.bits), ("act_bits", self.act_bits)):
            full = name == "act_bits" and k == 32
            if not (isinstance(k, int) and not isinstance(k, bool) and (2 <= k <= 8 or full)):
                extra = " (or 32 for full-precision activations)" if name == "act_bits" else ""
                raise ValueError(f"option {name!r} must be an int in 2..8{extra}, got {k!r}")

    @property
    def weight_bits(self) -> int:  # type: ignore[override]
        return self.bits

    @property
    def input_bits(self) -> int | None:
        return None if self.act_bits == 32 else self.act_bits

    def quantized_weight(self, layer: nn.Module, deterministic: bool = False) -> Tensor:
        return ste.dorefa_weight(layer.weight, self.bits)

    def quantize_input(self, layer: nn.Module, x: Tensor) -> Tensor:
        return x if self.input_bits is None else ste.dorefa_activation(x, self.act_bits)

    def codes_and_scales(self, layer: nn.Module, w: Tensor) -> dict[str, Any]:
        return {"codes": ste.dorefa_weight_codes(w, self.bits)}
