"""Low-precision Conv2d / Linear layers for quantization-aware training.

`QConv2d` and `QLinear` subclass nn.Conv2d / nn.Linear: same constructor arguments, same
`weight` / `bias` parameters and state-dict keys, plus the state of their quantization
scheme (``students.schemes``: one class per scheme, each in its own file). The layer holds
the scheme object as ``layer.scheme`` and hands it everything that differs between schemes:
the scheme registers its parameters and buffers on the layer, quantizes the input and the
latent weight with the STEs of `kernels.ste` in forward, and knows its export forms.

What export code reads (all layers):
  scheme          the Scheme (``scheme.name``, ``scheme.options``; per-scheme scales such as
                  ``scheme.alpha(layer)``, ``scheme.threshold(layer)``, ``scheme.wp(layer)``)
  weight          nn.Parameter, the latent full-precision weight (what the optimizer updates)
  bias            fp bias or None (never quantized)
  weight_bits     bits per weight: 1 (binary), 2 (ternary), k (dorefa), 8 (int8)
  act_bits        bits of the input quantizer: 1 (xnor), k (dorefa), 8 (int8), None = fp input
  quantized_weight()  the weight the eval-mode forward uses (detached)
  export_state()      dict with integer codes and the scales that rebuild quantized_weight()

What optimizers read (all layers):
  quantizer_parameters()  the learned quantizer state (TTQ: log_wp, log_wn; others: none). It
                  belongs in its own parameter group, without weight decay and with
                  lr x quantizer_lr_scale; students.quantize.quantizer_param_groups builds them.
  quantizer_lr_scale  that multiplier (the ttq option scale_lr; 1.0 for the other schemes)

Sign convention: sgn(x) = +1 if x > 0 else -1 (see kernels.ste).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels import ste

from .schemes import Scheme, make_scheme


def as_scheme(scheme: str | Scheme, options: dict[str, Any]) -> Scheme:
    """``scheme`` itself (then ``options`` must be empty) or the registered scheme of that name."""
    if isinstance(scheme, Scheme):
        if options:
            raise ValueError(f"options {sorted(options)} given with a built scheme {scheme.name!r}")
        return scheme
    return make_scheme(scheme, **options)


class _QuantMixin:
    """What QConv2d and QLinear share: every call goes to the scheme.

    The host class supplies what schemes call on it: `op(x, w, bias, padded)` (its op, with the
    padding already applied when `padded`), `pad_input(x)` and `input_scale(x)` (the XNOR-Net
    activation scale K).
    """

    weight: nn.Parameter
    scheme: Scheme

    def _setup_quant(self, scheme: str | Scheme, options: dict[str, Any]) -> None:
        self.scheme = as_scheme(scheme, options)
        self.scheme.attach(self)

    @property
    def options(self) -> dict[str, Any]:
        return self.scheme.options

    @property
    def weight_bits(self) -> int:
        return self.scheme.weight_bits

    @property
    def act_bits(self) -> int | None:
        return self.scheme.input_bits

    def quantizer_parameters(self) -> list[nn.Parameter]:
        """The learned quantizer state the optimizer should group apart (TTQ: log_wp, log_wn)."""
        return self.scheme.quantizer_parameters(self)

    @property
    def quantizer_lr_scale(self) -> float:
        """Learning-rate multiplier for `quantizer_parameters()`."""
        return self.scheme.quantizer_lr_scale

    @torch.no_grad()
    def quantized_weight(self) -> Tensor:
        """The weight the eval-mode forward multiplies with (binary-connect: deterministic sgn)."""
        return self.scheme.quantized_weight(self, deterministic=True).detach()

    def export_state(self) -> dict[str, Any]:
        """Integer codes plus scales; see the scheme's docstring for how they rebuild the weight."""
        return self.scheme.export_state(self)

    def clip_latent_(self) -> None:
        """Call after each optimizer step (BinaryConnect clips its latent weight to [-H, H])."""
        self.scheme.clip_latent_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.scheme.forward(self, x)

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)  # type: ignore[misc]
        if "scheme" in self.__dict__:
            self.scheme.on_train(self, mode)
        return self

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        super()._apply(fn, recurse)  # type: ignore[misc]
        if "scheme" in self.__dict__:
            self.scheme.on_apply(self)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.scheme.upgrade_state_dict(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.scheme}"  # type: ignore[misc]


class QConv2d(_QuantMixin, nn.Conv2d):
    """nn.Conv2d whose forward uses the scheme's quantized input and weight (see module docstring)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | str | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        scheme: str | Scheme,
        **options: Any,
    ) -> None:
        nn.Conv2d.__init__(
            self,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self._setup_quant(scheme, options)

    def op(self, x: Tensor, w: Tensor, bias: Tensor | None, padded: bool = False) -> Tensor:
        if padded:
            return F.conv2d(x, w, bias, self.stride, 0, self.dilation, self.groups)
        return self._conv_forward(x, w, bias)

    def pad_input(self, x: Tensor) -> Tensor:
        pads = self._reversed_padding_repeated_twice
        if not any(pads):
            return x
        return F.pad(x, pads, mode="constant" if self.padding_mode == "zeros" else self.padding_mode)

    def input_scale(self, x: Tensor) -> Tensor:
        """K of shape (N, out_channels or 1, Ho, Wo): one value per group and output position."""
        k = ste.xnor_input_scale(x, self.kernel_size, self.stride, self.dilation, self.groups)
        return k.repeat_interleave(self.out_channels // self.groups, dim=1) if self.groups > 1 else k

    @classmethod
    def from_float(cls, conv: nn.Conv2d, scheme: str | Scheme, **options: Any) -> QConv2d:
        """A QConv2d with `conv`'s hyper-parameters, a copy of its weight and bias, and its train mode."""
        q = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            scheme=scheme,
            **options,
        )
        return _copy_from(q, conv)


class QLinear(_QuantMixin, nn.Linear):
    """nn.Linear whose forward uses the scheme's quantized input and weight (see module docstring)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        scheme: str | Scheme,
        **options: Any,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._setup_quant(scheme, options)

    def op(self, x: Tensor, w: Tensor, bias: Tensor | None, padded: bool = False) -> Tensor:
        return F.linear(x, w, bias)

    def pad_input(self, x: Tensor) -> Tensor:
        return x

    def input_scale(self, x: Tensor) -> Tensor:
        """K = mean |x| over the input features, shape (..., 1)."""
        return x.abs().mean(dim=-1, keepdim=True)

    @classmethod
    def from_float(cls, linear: nn.Linear, scheme: str | Scheme, **options: Any) -> QLinear:
        """A QLinear with `linear`'s shape, a copy of its weight and bias, and its train mode."""
        q = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            scheme=scheme,
            **options,
        )
        return _copy_from(q, linear)


QLayer = QConv2d | QLinear


def _copy_from(q: QConv2d | QLinear, src: nn.Conv2d | nn.Linear) -> Any:
    with torch.no_grad():
        q.weight.copy_(src.weight)
        q.weight.requires_grad_(src.weight.requires_grad)
        if src.bias is not None:
            q.bias.copy_(src.bias)
            q.bias.requires_grad_(src.bias.requires_grad)
        q.scheme.init_from_weight(q)  # e.g. BinaryConnect's H and TTQ's scales start from the copied weight
    return q.train(src.training)
