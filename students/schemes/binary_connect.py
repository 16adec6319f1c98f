"""BinaryConnect (Courbariaux et al. 2015): weights in {-H, +H}, full-precision activations.

codes in {-1, +1} (int8), alpha = H (a scalar, fixed); Wq = alpha * codes. H is the buffer
``binary_scale``, fixed when the layer is made (and again after ``from_float`` copies a
weight): option scale="rms" (default) the RMS of the weight it starts from, so the layer keeps
its fp gain (matters in nets without BN, e.g. SqueezeNet); "glorot" sqrt(1.5 / (fan_in +
fan_out)) as in the authors' code; or a positive float (1.0: plain +-1). Latent weights live
in [-H, H] (``clip_latent_`` after each optimizer step); stochastic=True samples +1 with
p = sigma(W / H) in training, the eval forward uses sgn. Exports packed: binary weights,
int8 activations.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from kernels import ste

from .base import Scheme, check_bools, is_number_in
from .packing import packed_form
from .registry import register_scheme


@register_scheme
@dataclasses.dataclass(frozen=True)
class BinaryConnect(Scheme):
    stochastic: bool = False
    scale: str | float = "rms"

    name = "binary-connect"
    weight_bits = 1
    codes = (-1, 1)
    packed_int8_input = True

    def __post_init__(self) -> None:
        if self.scale not in ("rms", "glorot") and not is_number_in(self.scale, 0, float("inf")):
            raise ValueError(f"option 'scale' must be 'rms', 'glorot' or a positive number, got {self.scale!r}")
        check_bools(self, "stochastic")

    def attach(self, layer: nn.Module) -> None:
        w = layer.weight
        layer.register_buffer("binary_scale", torch.ones((), dtype=w.dtype, device=w.device))
        self.init_from_weight(layer)

    @torch.no_grad()
    def init_from_weight(self, layer: nn.Module) -> None:
        rule, groups = self.scale, getattr(layer, "groups", 1)
        h = float(rule) if not isinstance(rule, str) else ste.binary_connect_scale(layer.weight, rule, groups)
        layer.binary_scale.fill_(h)

    def alpha(self, layer: nn.Module) -> Tensor:
        """H, the magnitude of every weight."""
        return layer.binary_scale.detach().clone()

    def quantized_weight(self, layer: nn.Module, deterministic: bool = False) -> Tensor:
        # In units of H the paper's rules hold as printed: sgn, sigma(w / H), clip to [-1, 1].
        # The gradient w.r.t. W is still the identity (H * g / H).
        h = layer.binary_scale
        stochastic = self.stochastic and layer.training and not deterministic
        return h * ste.binary_connect_weight(layer.weight / h, stochastic=stochastic)

    def clip_latent_(self, layer: nn.Module) -> None:
        """Clip the latent weight to [-H, H]. Under DeepSpeed with fp32 master weights the clip of
        the module copy does not reach the master copy; the forward is correct either way."""
        ste.clip_latent_(layer.weight.data, float(layer.binary_scale))

    def codes_and_scales(self, layer: nn.Module, w: Tensor) -> dict[str, Any]:
        return {"codes": ste.sgn(w).to(torch.int8), "alpha": self.alpha(layer)}

    def portable(self, layer: nn.Module) -> nn.Module:
        """H * b: int8 codes b in {-1, +1} and the scale H (ONNX DequantizeLinear), exact."""
        from students.deploy.portable import coded_layer

        return coded_layer(layer, self.export_state(layer)["codes"], self.alpha(layer))

    def packed(self, layer: nn.Module) -> nn.Module:
        return packed_form(layer, ternary=False, binary_activations=False, act_scale=True)
