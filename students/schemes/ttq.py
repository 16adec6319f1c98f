"""Trained Ternary Quantization (Zhu et al. 2017): weights in {-Wn, 0, +Wp}, Wp and Wn learned.

codes in {-1, 0, +1}, threshold delta = threshold_factor * max |W| (0.05); Wq = Wp where the
code is +1, -Wn where it is -1. Wp, Wn (shape (1,)) are > 0 by construction: the layer's
parameters are ``log_wp``, ``log_wn`` and Wp = exp(log_wp) (a negative Wn would turn the
layer's "negative" weights positive, and an optimizer step changes them by a ratio, whatever
their size: BN makes the function depend on Wp : Wn only). A state dict with the older keys
``wp`` / ``wn`` still loads.

Options: grads="normalized" (default) or "paper", the backward rule (kernels.ste.TTQWeightSTE:
the paper's rule as printed collapses nets trained from scratch with plain SGD); scale_lr=1.0,
the learning-rate multiplier of the scales' optimizer group (``quantizer_parameters``, no
weight decay: it would pull the log-scales to 1). Buffer ``latent_bound``: max |W| at the
layer's first training forward (0 until then); with grads="normalized" the latent weight gets
gradient only inside [-latent_bound, latent_bound] (hard-tanh STE), so a few drifting weights
cannot raise delta = t * max |W| until the layer is all zeros.

Depthwise convs stay fp32 by default (``skip_depthwise``). Measured with normalized grads,
log-scales and the latent bound, MobileNet v1 alpha 0.25 on digits, distilled (0.3 CE + 0.7 KD,
T 4) from the demo teachers, SGD lr 0.1 cosine, batch 64, val top-1 minus the fp student's:
ternary depthwise convs -5.7 / -4.0 / -4.6 points at 10 epochs (3 seeds), -3.3 at 15, -4.7 at
20, with dips of 10-50 points mid-training; fp depthwise convs +1.0 / -0.6 / -1.0 at 15 epochs.
A depthwise filter is 9 taps that BN rescales per channel, and one threshold and scale pair per
layer zeroes whole channels (the last ones run on 1x1 maps where only the centre tap matters:
95% zeros). They hold ~5% of the weights at alpha 0.25, ~1% at alpha 1 (~3% of the MACs,
MobileNet paper Table 2); the packed kernels take fp32 depthwise layers.

Exports packed: ternary weights with two scales, int8 activations.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from kernels import ste

from .base import Scheme, is_number_in
from .packing import packed_form
from .registry import register_scheme


@register_scheme
@dataclasses.dataclass(frozen=True)
class Ttq(Scheme):
    threshold_factor: float = 0.05
    grads: str = "normalized"
    scale_lr: float = 1.0

    name = "ttq"
    weight_bits = 2
    codes = (-1, 0, 1)
    skip_depthwise = True
    packed_int8_input = True

    def __post_init__(self) -> None:
        if not is_number_in(self.threshold_factor, 0, 1):
            raise ValueError(f"option 'threshold_factor' must be a number in (0, 1), got {self.threshold_factor!r}")
        if self.grads not in ste.TTQ_GRADS:
            raise ValueError(f"option 'grads' must be one of {list(ste.TTQ_GRADS)}, got {self.grads!r}")
        if not (self.scale_lr == 0 or is_number_in(self.scale_lr, 0, float("inf"))):
            raise ValueError(f"option 'scale_lr' must be a number >= 0, got {self.scale_lr!r}")

    # ---------------------------------------------------------------- state on the layer

    def attach(self, layer: nn.Module) -> None:
        wp, wn = ste.ttq_init_scales(layer.weight.detach(), self.threshold_factor)
        layer.log_wp = nn.Parameter(wp.log())
        layer.log_wn = nn.Parameter(wn.log())
        w = layer.weight
        layer.register_buffer("latent_bound", torch.zeros((), dtype=w.dtype, device=w.device))
        layer._bound_checked = False

    def init_from_weight(self, layer: nn.Module) -> None:
        self.set_scales_(layer, *ste.ttq_init_scales(layer.weight, self.threshold_factor))

    def upgrade_state_dict(self, layer: nn.Module, state_dict: dict[str, Tensor], prefix: str) -> None:
        """State dicts from before the log parametrization: keys wp / wn, no latent_bound (the next
        training forward sets it from the loaded weight)."""
        for side in ("wp", "wn"):
            old, new = prefix + side, prefix + "log_" + side
            if old in state_dict and new not in state_dict:
                value = state_dict.pop(old)
                state_dict[new] = value.clamp_min(torch.finfo(value.dtype).tiny).log()
        if prefix + "latent_bound" not in state_dict:  # unset: fixed by the next training forward
            state_dict[prefix + "latent_bound"] = torch.zeros_like(layer.latent_bound)
        layer._bound_checked = False

    def wp(self, layer: nn.Module) -> Tensor:
        """Wp = exp(log_wp), differentiable (the forward uses it)."""
        return layer.log_wp.exp()

    def wn(self, layer: nn.Module) -> Tensor:
        """Wn = exp(log_wn) > 0 (the weight value is -Wn)."""
        return layer.log_wn.exp()

    @torch.no_grad()
    def set_scales_(self, layer: nn.Module, wp: float | Tensor, wn: float | Tensor) -> None:
        """Set Wp, Wn (> 0) in place, e.g. after copying a latent weight."""
        for param, value in ((layer.log_wp, wp), (layer.log_wn, wn)):
            value = torch.as_tensor(value, dtype=torch.float32)
            if not bool((value > 0).all()):
                raise ValueError(f"TTQ scales must be > 0, got {value.tolist()}")
            param.copy_(value.log().reshape(param.shape))

    def threshold(self, layer: nn.Module) -> Tensor:
        """delta = threshold_factor * max |W|."""
        return ste.ttq_threshold(layer.weight, self.threshold_factor)

    # ---------------------------------------------------------------- training

    def quantized_weight(self, layer: nn.Module, deterministic: bool = False) -> Tensor:
        bound = self._latent_bound(layer) if layer.training and torch.is_grad_enabled() else None
        return ste.ttq_weight(layer.weight, self.wp(layer), self.wn(layer), self.threshold_factor, self.grads, bound)

    def _latent_bound(self, layer: nn.Module) -> Tensor:
        """latent_bound, fixed to max |W| by the first training forward (0 means not yet).

        Not at construction: DDP and DeepSpeed make the ranks' weights equal by broadcasting
        parameters, not buffers, after every rank built (and randomly initialized) its own
        model; a bound taken from each rank's own init would differ between ranks, and a
        resumed run (every rank loading rank 0's buffers) would not continue the same run.
        A checkpoint restores the bound once set."""
        if not layer._bound_checked:
            with torch.no_grad():
                if not bool(layer.latent_bound > 0):
                    layer.latent_bound.copy_(layer.weight.detach().abs().max())
            layer._bound_checked = True
        return layer.latent_bound

    def quantizer_parameters(self, layer: nn.Module) -> list[nn.Parameter]:
        return [layer.log_wp, layer.log_wn]

    @property
    def quantizer_lr_scale(self) -> float:
        return float(self.scale_lr)

    # ---------------------------------------------------------------- export

    def codes_and_scales(self, layer: nn.Module, w: Tensor) -> dict[str, Any]:
        delta = self.threshold(layer)
        return {"codes": ste.ternary_codes(w, delta), "wp": self.wp(layer).detach().clone(),
                "wn": self.wn(layer).detach().clone(), "threshold": delta}  # fmt: skip

    def portable(self, layer: nn.Module) -> nn.Module:
        """int8 codes t and the two scales, rebuilt as where(t > 0, Wp, where(t < 0, -Wn, 0)): a
        selection, exact. One int8 scale s would need Wp = a s and Wn = b s with integers a, b <= 127,
        which learned scales are not in general, so DequantizeLinear alone cannot hold TTQ exactly."""
        from students.deploy.portable import coded_layer

        state = self.export_state(layer)
        return coded_layer(layer, state["codes"], state["wp"], state["wn"])

    def packed(self, layer: nn.Module) -> nn.Module:
        return packed_form(layer, ternary=True)
