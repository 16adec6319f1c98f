"""Deployable ternary/binary layers on the packed kernels.

Each layer holds its weights as packed uint8 tiles (kernels/packing.py) plus
float scales and bias, all as buffers, so ``state_dict`` round-trips and the
layer moves with ``.to(device)``. Forward calls the ``torch.ops.distill`` ops,
so ``torch.export`` / ``torch.compile`` trace through it.

- PackedTernaryLinear / PackedTernaryConv2d: TWN (one scale per output
  channel) or TTQ (separate scales for +1 and -1 weights); int8 activations.
- PackedBinaryLinear / PackedBinaryConv2d: one scale per output channel; int8
  activations (binary-connect style) or binary ones (``binary_activations=True``,
  XNOR-Net: sgn(x) = +1 if x > 0 else -1, times the mean |x| of each row or
  patch unless ``act_scale=False``).

Convolutions cover groups=1; depthwise 3x3 convs run in fp32 on the project's NHWC kernel
(PackedDepthwiseConv2d). Their weights are
packed as [O, kh*kw*C] (``reference.conv_weight_rows``), the column order of
the channels-last im2col rows, and they return NCHW tensors in channels-last
memory, which the next packed conv reads without a copy. ``fold_batchnorm``
folds a following BatchNorm into a packed layer's scales and bias, ``fuse_activation``
a following ReLU / ReLU6 into its kernel (a clamp in the epilogue).
``save_packed`` / ``load_packed`` store a whole model in one file (tensors and
plain data only, loadable with ``weights_only=True``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kernels import ops, reference
from kernels.packing import (
    binary_from_float,
    binary_packed_shape,
    dw_codes_shape,
    pack_binary,
    pack_dw_ternary,
    pack_ternary,
    ternary_from_float,
    ternary_packed_shape,
    unpack_binary,
    unpack_ternary,
)

FORMAT = "distill.packed/1"


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _vec(v: Tensor | None, n: int, what: str) -> Tensor | None:
    if v is None:
        return None
    v = v.detach().float().reshape(-1).clone()
    if v.numel() != n:
        raise ValueError(f"{what}: expected {n} values, got {v.numel()}")
    return v


class _Packed(nn.Module):
    """Shared buffers and helpers. Subclasses set ``kind`` and implement ``dequantize``.

    ``use_reference = True`` (an instance attribute, not saved) runs the layer on the
    plain-torch spec (kernels.reference) instead of the compiled ops: the same numbers, bit
    for bit, which is how a model trained with ``students.simulate_export`` evaluates itself.
    """

    kind = ""
    use_reference = False

    @property
    def _impl(self) -> Any:
        return reference if self.use_reference else ops

    def _init_buffers(self, packed_shape, n: int, bias: bool, two_scales: bool) -> None:
        self.register_buffer("weight_packed", torch.zeros(packed_shape, dtype=torch.uint8))
        self.register_buffer("scale_pos", torch.ones(n))
        self.register_buffer("scale_neg", torch.ones(n) if two_scales else None)
        self.register_buffer("bias", torch.zeros(n) if bias else None)

    def _init_clamp(self, act_min: float | None, act_max: float | None) -> None:
        """A fused activation: the kernels clamp the output to [act_min, act_max] (None: open)."""
        self.act_min = None if act_min is None else float(act_min)
        self.act_max = None if act_max is None else float(act_max)

    def _clamp(self) -> dict[str, Any]:
        return {"act_min": self.act_min, "act_max": self.act_max}

    def _clamp_repr(self) -> str:
        if self.act_min is None and self.act_max is None:
            return ""
        return f", act_min={self.act_min}, act_max={self.act_max}"

    def config(self) -> dict[str, Any]:
        """Constructor arguments, enough to rebuild the layer before loading its state."""
        raise NotImplementedError

    def packed_bytes(self) -> int:
        """Bytes of the deployed layer: packed weights, scales and bias."""
        return sum(b.numel() * b.element_size() for b in self.buffers())


class _TernaryMixin:
    def _set_ternary(self, codes: Tensor, scale_pos: Tensor, scale_neg: Tensor | None, bias: Tensor | None):
        n = codes.shape[0]
        if (scale_neg is not None) != (self.scale_neg is not None):
            raise ValueError("scale_neg must be given exactly when the layer is asymmetric (TTQ)")
        self.weight_packed.copy_(pack_ternary(codes.reshape(n, -1)))
        self.scale_pos.copy_(_vec(scale_pos, n, "scale_pos"))
        if scale_neg is not None:
            self.scale_neg.copy_(_vec(scale_neg, n, "scale_neg"))
        if (bias is not None) != (self.bias is not None):
            raise ValueError("bias must be given exactly when the layer was built with bias=True")
        if bias is not None:
            self.bias.copy_(_vec(bias, n, "bias"))
        return self

    def _dequantize_2d(self, n: int, k: int) -> Tensor:
        codes = unpack_ternary(self.weight_packed, n, k).float()
        neg = self.scale_neg if self.scale_neg is not None else self.scale_pos
        return torch.where(codes > 0, self.scale_pos[:, None], -neg[:, None]) * codes.abs()


class _BinaryMixin:
    def _set_binary(self, signs: Tensor, scale: Tensor, bias: Tensor | None):
        n = signs.shape[0]
        self.weight_packed.copy_(pack_binary(signs.reshape(n, -1)))
        self.scale_pos.copy_(_vec(scale, n, "scale"))
        if (bias is not None) != (self.bias is not None):
            raise ValueError("bias must be given exactly when the layer was built with bias=True")
        if bias is not None:
            self.bias.copy_(_vec(bias, n, "bias"))
        return self

    def _dequantize_2d(self, n: int, k: int) -> Tensor:
        return unpack_binary(self.weight_packed, n, k).float() * self.scale_pos[:, None]


# ---------------------------------------------------------------- linear


class PackedTernaryLinear(_TernaryMixin, _Packed):
    kind = "ternary_linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, asymmetric: bool = False,
                 act_min: float | None = None, act_max: float | None = None):  # fmt: skip
        super().__init__()
        self.in_features, self.out_features, self.asymmetric = in_features, out_features, asymmetric
        self._init_clamp(act_min, act_max)
        self._init_buffers(ternary_packed_shape(out_features, in_features), out_features, bias, asymmetric)

    @classmethod
    def from_float(cls, weight: Tensor, bias: Tensor | None = None) -> PackedTernaryLinear:
        """From a dequantized ternary weight [out, in] (each row in {-a, 0, +b})."""
        codes, sp, sn = ternary_from_float(weight)
        layer = cls(weight.shape[1], weight.shape[0], bias is not None, sn is not None)
        return layer._set_ternary(codes, sp, sn, bias)

    def forward(self, x: Tensor) -> Tensor:
        return self._impl.ternary_linear(x, self.weight_packed, self.in_features, self.scale_pos, self.scale_neg,
                                  self.bias, self.act_min, self.act_max)  # fmt: skip

    def dequantize(self) -> Tensor:
        """The float weight [out, in] this layer computes with."""
        return self._dequantize_2d(self.out_features, self.in_features)

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "asymmetric": self.asymmetric, **self._clamp()}  # fmt: skip

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, " + (
            f"asymmetric={self.asymmetric}{self._clamp_repr()}"
        )


class _BinaryActivations:
    """int8 activations, or XNOR's sgn(x) scaled (act_scale) by the mean |x| of each row or patch."""

    def _init_activations(self, binary_activations: bool, act_scale: bool) -> None:
        self.binary_activations, self.act_scale = binary_activations, act_scale

    def _activations(self) -> dict[str, Any]:
        return {"binary_activations": self.binary_activations, "act_scale": self.act_scale}

    def _activations_repr(self) -> str:
        if not self.binary_activations:
            return "activations=int8"
        return f"activations=binary, act_scale={self.act_scale}"


class PackedBinaryLinear(_BinaryActivations, _BinaryMixin, _Packed):
    kind = "binary_linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 binary_activations: bool = False, act_scale: bool = True,
                 act_min: float | None = None, act_max: float | None = None):  # fmt: skip
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_clamp(act_min, act_max)
        self._init_activations(binary_activations, act_scale)
        self._init_buffers(binary_packed_shape(out_features, in_features), out_features, bias, False)

    @classmethod
    def from_float(cls, weight: Tensor, bias: Tensor | None = None, binary_activations: bool = False,
                   act_scale: bool = True) -> PackedBinaryLinear:  # fmt: skip
        """From a dequantized binary weight [out, in] (each row in {-a, +a})."""
        signs, scale = binary_from_float(weight)
        layer = cls(weight.shape[1], weight.shape[0], bias is not None, binary_activations, act_scale)
        return layer._set_binary(signs, scale, bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.binary_activations:
            return self._impl.xnor_linear(x, self.weight_packed, self.in_features, self.scale_pos, self.bias,
                                   self.act_scale, self.act_min, self.act_max)  # fmt: skip
        return self._impl.binary_linear(x, self.weight_packed, self.in_features, self.scale_pos, self.bias,
                                 self.act_min, self.act_max)  # fmt: skip

    def dequantize(self) -> Tensor:
        return self._dequantize_2d(self.out_features, self.in_features)

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, **self._activations(), **self._clamp()}  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
            + self._activations_repr()
            + self._clamp_repr()
        )


# ---------------------------------------------------------------- convolution


class _ConvGeometry:
    def _init_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation) -> None:
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.k = in_channels * self.kernel_size[0] * self.kernel_size[1]
        # 1x1, stride 1, unpadded: the conv is the GEMM on the channels-last input itself
        self._pointwise = self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    def _geometry(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "dilation": self.dilation}  # fmt: skip

    def _geometry_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}"
        )

    @staticmethod
    def _check_conv(conv_weight: Tensor, groups: int, padding_mode: str) -> None:
        if groups != 1:
            raise ValueError(f"packed convolutions support groups=1 only (got groups={groups}); keep it fp32")
        if padding_mode != "zeros":
            raise ValueError(f"packed convolutions support padding_mode='zeros' only (got {padding_mode!r})")
        if conv_weight.dim() != 4:
            raise ValueError(f"expected a conv weight [out, in, kh, kw], got shape {list(conv_weight.shape)}")


class PackedTernaryConv2d(_ConvGeometry, _TernaryMixin, _Packed):
    kind = "ternary_conv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, asymmetric: bool = False, act_min: float | None = None,
                 act_max: float | None = None):  # fmt: skip
        super().__init__()
        self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self.asymmetric = asymmetric
        self._init_clamp(act_min, act_max)
        self._init_buffers(ternary_packed_shape(out_channels, self.k), out_channels, bias, asymmetric)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, weight: Tensor | None = None) -> PackedTernaryConv2d:
        """From an nn.Conv2d whose (given, or own) weight is dequantized ternary."""
        w = conv.weight if weight is None else weight
        cls._check_conv(w, conv.groups, conv.padding_mode)
        codes, sp, sn = ternary_from_float(reference.conv_weight_rows(w))
        layer = cls(w.shape[1], w.shape[0], w.shape[2:], conv.stride, conv.padding, conv.dilation,
                    conv.bias is not None, sn is not None)  # fmt: skip
        return layer._set_ternary(codes, sp, sn, conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self._pointwise and not self.use_reference and x.shape[1] == self.in_channels and ops.direct(x):
            y = ops.conv1x1_direct(x, "ternary", self.weight_packed, self.out_channels, self.scale_pos,
                                   self.scale_neg, self.bias, self.act_min, self.act_max)  # fmt: skip
            if y is not None:
                return y
        return self._impl.ternary_conv2d(x, self.weight_packed, self.kernel_size, self.scale_pos, self.scale_neg,
                                  self.bias, self.stride, self.padding, self.dilation, self.act_min,
                                  self.act_max)  # fmt: skip

    def dequantize(self) -> Tensor:
        """The float weight [out, in, kh, kw] this layer computes with."""
        rows = self._dequantize_2d(self.out_channels, self.k)
        return reference.conv_weight_from_rows(rows, self.in_channels, self.kernel_size)

    def config(self) -> dict[str, Any]:
        return {**self._geometry(), "bias": self.bias is not None, "asymmetric": self.asymmetric,
                **self._clamp()}  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"{self._geometry_repr()}, bias={self.bias is not None}, asymmetric={self.asymmetric}"
            + self._clamp_repr()
        )


class PackedBinaryConv2d(_ConvGeometry, _BinaryActivations, _BinaryMixin, _Packed):
    kind = "binary_conv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, binary_activations: bool = False, act_scale: bool = True,
                 act_min: float | None = None, act_max: float | None = None):  # fmt: skip
        super().__init__()
        self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self._init_activations(binary_activations, act_scale)
        self._init_clamp(act_min, act_max)
        self._init_buffers(binary_packed_shape(out_channels, self.k), out_channels, bias, False)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, weight: Tensor | None = None, binary_activations: bool = False,
                  act_scale: bool = True) -> PackedBinaryConv2d:  # fmt: skip
        """From an nn.Conv2d whose (given, or own) weight is dequantized binary."""
        w = conv.weight if weight is None else weight
        cls._check_conv(w, conv.groups, conv.padding_mode)
        signs, scale = binary_from_float(reference.conv_weight_rows(w))
        layer = cls(w.shape[1], w.shape[0], w.shape[2:], conv.stride, conv.padding, conv.dilation,
                    conv.bias is not None, binary_activations, act_scale)  # fmt: skip
        return layer._set_binary(signs, scale, conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self._pointwise and not self.use_reference and x.shape[1] == self.in_channels and ops.direct(x):
            y = ops.conv1x1_direct(x, "xnor" if self.binary_activations else "binary", self.weight_packed,
                                   self.out_channels, self.scale_pos, None, self.bias, self.act_min, self.act_max,
                                   self.act_scale)  # fmt: skip
            if y is not None:
                return y
        return self._impl.binary_conv2d(
            x, self.weight_packed, self.kernel_size, self.scale_pos, self.bias, self.stride, self.padding,
            self.dilation, xnor=self.binary_activations, act_scale=self.act_scale, act_min=self.act_min,
            act_max=self.act_max,
        )  # fmt: skip

    def dequantize(self) -> Tensor:
        rows = self._dequantize_2d(self.out_channels, self.k)
        return reference.conv_weight_from_rows(rows, self.in_channels, self.kernel_size)

    def config(self) -> dict[str, Any]:
        return {**self._geometry(), "bias": self.bias is not None, **self._activations(), **self._clamp()}

    def extra_repr(self) -> str:
        return (
            f"{self._geometry_repr()}, bias={self.bias is not None}, {self._activations_repr()}"
            + self._clamp_repr()
        )


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[Tensor, Tensor | None]:
    """An fp32 conv's (weight, bias) with an eval-mode BatchNorm that follows it folded in."""
    w, b = conv.weight.detach().float(), None if conv.bias is None else conv.bias.detach().float()
    if bn is None:
        return w, b
    return torch.nn.utils.fusion.fuse_conv_bn_weights(w, b, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                                                      bn.bias)  # fmt: skip


def _kernel_3x3(conv: nn.Conv2d) -> bool:
    """The window the 3x3 kernels run: 3x3, equal stride 1 or 2, equal zero padding 0 or 1, no dilation."""
    return (
        conv.kernel_size == (3, 3) and conv.stride[0] == conv.stride[1] in (1, 2)
        and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
        and conv.padding[0] == conv.padding[1] in (0, 1) and conv.dilation == (1, 1)
    )  # fmt: skip


class PackedDepthwiseConv2d(_Packed):
    """A float32 depthwise 3x3 conv on the project's NHWC kernel (ops.depthwise_conv2d), with
    its BatchNorm folded in (``from_conv``) and a following ReLU / ReLU6 fused (``fuse_activation``).

    Why not nn.Conv2d: the depthwise convs of a MobileNet are memory-bound, and oneDNN's
    channels-last depthwise path took 22-29% of the packed model's time; this kernel reads
    the packed 1x1 convs' channels-last output directly and writes what the next one reads.
    Weight buffer: [3, 3, C] (kh, kw, C), the kernel's layout; or, ``ternary``, 2-bit codes
    ``weight_codes`` (kernels.packing.pack_dw_ternary) and a scale per channel ``weight_scale``:
    a TWN student's depthwise weights, BN folded, are exactly code x scale, so they ship in 1/16
    of the bytes and compute the same numbers (``float_weight``).
    """

    kind = "depthwise_conv2d"

    def __init__(self, channels: int, stride: int = 1, padding: int = 1, bias: bool = True,
                 act_min: float | None = None, act_max: float | None = None, ternary: bool = False):  # fmt: skip
        super().__init__()
        self.channels, self.stride, self.padding, self.ternary = channels, int(stride), int(padding), ternary
        self.in_channels = self.out_channels = self.groups = channels  # a conv's geometry, for readers
        self.kernel_size, self.dilation = (3, 3), (1, 1)
        self._init_clamp(act_min, act_max)
        if ternary:
            self.register_buffer("weight_codes", torch.zeros(dw_codes_shape(channels), dtype=torch.uint8))
            self.register_buffer("weight_scale", torch.zeros(channels))
        else:
            self.register_buffer("weight", torch.zeros(3, 3, channels))
        self.register_buffer("bias", torch.zeros(channels) if bias else None)
        self._unpacked: tuple[tuple[int, int, int, int], Tensor] | None = None

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        """True for the convs this kernel runs: depthwise 3x3, stride 1/2, padding 0/1, no dilation."""
        return (
            type(conv) is nn.Conv2d and conv.groups == conv.in_channels == conv.out_channels and _kernel_3x3(conv)
        )  # fmt: skip

    @classmethod
    @torch.no_grad()
    def from_conv(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> PackedDepthwiseConv2d:
        """From a depthwise nn.Conv2d (``supports``), folding an eval-mode BatchNorm that follows it.
        Ternary form when every channel's folded weights are exactly 0 or +-(one value)."""
        if not cls.supports(conv):
            raise ValueError(f"PackedDepthwiseConv2d: not a depthwise 3x3 conv with stride 1/2 and padding 0/1: {conv}")
        w, b = _fold_bn(conv, bn)
        w = w.reshape(-1, 3, 3).permute(1, 2, 0).float()
        scale = w.abs().amax(dim=(0, 1))
        ternary = bool(((w == 0) | (w.abs() == scale)).all())
        layer = cls(conv.in_channels, conv.stride[0], conv.padding[0], b is not None, ternary=ternary)
        if ternary:
            layer.weight_codes.copy_(pack_dw_ternary(torch.sign(w).to(torch.int8)))
            layer.weight_scale.copy_(scale)
        else:
            layer.weight.copy_(w)
        if b is not None:
            layer.bias.copy_(b.reshape(-1))
        return layer.eval()

    def float_weight(self) -> Tensor:
        """The float32 weight [3, 3, C] the kernel computes with (unpacked once per codes version)."""
        if not self.ternary:
            return self.weight
        key = (self.weight_codes.data_ptr(), self.weight_codes._version, self.weight_scale.data_ptr(),
               self.weight_scale._version)  # fmt: skip
        if self._unpacked is None or self._unpacked[0] != key or torch.compiler.is_compiling():
            self._unpacked = (key, reference.depthwise_weight(self.weight_codes, self.weight_scale))
        return self._unpacked[1]

    def kernel_weight(self) -> tuple[Tensor, Tensor | None]:
        """(weight, scale) as the ops take them: the float weight and None, or the codes and scales."""
        return (self.weight_codes, self.weight_scale) if self.ternary else (self.weight, None)

    def forward(self, x: Tensor) -> Tensor:
        if not self.use_reference and ops.direct(x):
            y = ops.depthwise_direct(x, self.float_weight(), self.bias, self.stride, self.padding, self.act_min,
                                     self.act_max)  # fmt: skip
            if y is not None:
                return y
        if self.use_reference:
            return reference.depthwise3x3(x, self.float_weight(), self.bias, self.stride, self.padding, self.act_min,
                                          self.act_max)  # fmt: skip
        w, scale = self.kernel_weight()
        return ops.depthwise_conv2d(x, w, self.bias, self.stride, self.padding, self.act_min, self.act_max, scale)

    def dequantize(self) -> Tensor:
        """The torch depthwise weight [C, 1, 3, 3]."""
        return self.float_weight().permute(2, 0, 1).unsqueeze(1)

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "stride": self.stride, "padding": self.padding,
                "bias": self.bias is not None, **self._clamp(), **({"ternary": True} if self.ternary else {})}  # fmt: skip

    def extra_repr(self) -> str:
        return f"{self.channels}, stride={self.stride}, padding={self.padding}, bias={self.bias is not None}" + (
            self._clamp_repr()
        )


class PackedConv3x3(_Packed):
    """A float32 dense 3x3 conv with few input channels (a stem, kept fp32 by ``keep_first``) on
    the project's kernel (ops.conv3x3), BN folded (``from_conv``), ReLU / ReLU6 fused.

    Why: it reads the NCHW network input through its strides and writes the channels-last
    tensor the packed layers read; torch's conv on that mix of layouts took the slow im2col
    path (1.5 ms of an 8 ms MobileNetV2 at 224). Weight buffer ``weight_rows`` [9 * Cin, Cout]
    (``weight``: its [3, 3, Cin, Cout] view).
    """

    kind = "conv3x3"
    MAX_IN_CHANNELS = 8  # one broadcast per input channel and tap: right for an image's few channels

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, padding: int = 1, bias: bool = True,
                 act_min: float | None = None, act_max: float | None = None):  # fmt: skip
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.padding = int(stride), int(padding)
        self.kernel_size, self.dilation, self.groups = (3, 3), (1, 1), 1  # a conv's geometry, for readers
        self._init_clamp(act_min, act_max)
        # kept 2-D ([3 * 3 * Cin, Cout]): a model's .to(memory_format=channels_last) would
        # otherwise restride a 4-D buffer, and the kernel reads it densely
        self.register_buffer("weight_rows", torch.zeros(9 * in_channels, out_channels))
        self.register_buffer("bias", torch.zeros(out_channels) if bias else None)

    @classmethod
    def supports(cls, conv: nn.Module) -> bool:
        """True for dense 3x3 convs with at most MAX_IN_CHANNELS inputs, stride 1/2, padding 0/1."""
        return (
            type(conv) is nn.Conv2d and conv.groups == 1 and conv.in_channels <= cls.MAX_IN_CHANNELS
            and _kernel_3x3(conv)
        )  # fmt: skip

    @classmethod
    @torch.no_grad()
    def from_conv(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> PackedConv3x3:
        """From an nn.Conv2d that ``supports`` accepts, folding an eval-mode BatchNorm that follows it."""
        if not cls.supports(conv):
            raise ValueError(f"PackedConv3x3: not a dense 3x3 conv with <= {cls.MAX_IN_CHANNELS} inputs: {conv}")
        w, b = _fold_bn(conv, bn)
        layer = cls(conv.in_channels, conv.out_channels, conv.stride[0], conv.padding[0], b is not None)
        layer.weight_rows.copy_(w.permute(2, 3, 1, 0).reshape(9 * conv.in_channels, -1))
        if b is not None:
            layer.bias.copy_(b.reshape(-1))
        return layer.eval()

    @property
    def weight(self) -> Tensor:
        """[3, 3, Cin, Cout], the kernel's layout."""
        return self.weight_rows.view(3, 3, self.in_channels, self.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_reference:
            return reference.conv3x3(x, self.weight, self.bias, self.stride, self.padding, self.act_min, self.act_max)
        if ops.direct(x):
            return ops.conv3x3_direct(x, self.weight, self.bias, self.stride, self.padding, self.act_min, self.act_max)
        return ops.conv3x3(x, self.weight, self.bias, self.stride, self.padding, self.act_min, self.act_max)

    def dequantize(self) -> Tensor:
        """The torch weight [Cout, Cin, 3, 3]."""
        return self.weight.permute(3, 2, 0, 1)

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels, "stride": self.stride,
                "padding": self.padding, "bias": self.bias is not None, **self._clamp()}  # fmt: skip

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, padding={self.padding}, "
                f"bias={self.bias is not None}{self._clamp_repr()}")  # fmt: skip


def _sole_layer(stage: nn.Module) -> nn.Module:
    """The one non-Identity module of a conv-bn-act stage after export (the layer itself)."""
    if not isinstance(stage, nn.Sequential):
        return stage
    rest = [m for m in stage if type(m) is not nn.Identity]
    return rest[0] if len(rest) == 1 else stage


def _block_layers(conv: nn.Sequential) -> tuple[nn.Module | None, nn.Module, nn.Module]:
    """(expand or None, depthwise, project) of a block's stages."""
    layers = [_sole_layer(s) for s in conv]
    return (layers[0] if len(layers) == 3 else None, layers[-2], layers[-1])


def _pointwise_args(layer: nn.Module) -> tuple | None:
    """(w_packed, K, N, scale_pos, scale_neg, bias, act_min, act_max, kind) of a 1x1 layer a fused block
    can run (ternary, or XNOR: binary weights and activations), else None."""
    if not getattr(layer, "_pointwise", False):
        return None
    if isinstance(layer, PackedTernaryConv2d):
        kind, neg = ops.PW_TERNARY, layer.scale_neg
    elif isinstance(layer, PackedBinaryConv2d) and layer.binary_activations:
        kind, neg = (ops.PW_XNOR if layer.act_scale else ops.PW_XNOR_UNIT), None
    else:
        return None
    return (layer.weight_packed, layer.in_channels, layer.out_channels, layer.scale_pos, neg, layer.bias,
            layer.act_min, layer.act_max, kind)  # fmt: skip


class PackedInvertedResidual(nn.Module):
    """A MobileNetV2 block whose layers are packed, run as one C call (ops.inverted_residual_direct).

    ``conv`` is the block's own nn.Sequential, kept as it is (so state-dict keys do not change
    and a saved file loads into the zoo's skeleton): [expand 1x1 ternary,] depthwise 3x3
    (PackedDepthwiseConv2d, padding 1), project 1x1 ternary, each possibly wrapped with the
    Identity modules export leaves behind. The fused call gives the same bits as running them
    in turn (which is what the op path, torch.export and ``use_reference`` do), without the
    expanded tensor, the block's largest, ever leaving the cache.
    """

    def __init__(self, conv: nn.Sequential, residual: bool) -> None:
        super().__init__()
        self.conv, self.use_residual = conv, residual

    @staticmethod
    def fusable(conv: nn.Module) -> bool:
        """True when ``conv`` is [expand,] depthwise, project with packed 1x1s of one kind (ternary, or
        XNOR with the same beta setting) and our depthwise."""
        if not isinstance(conv, nn.Sequential) or len(conv) not in (2, 3):
            return False
        layers = [_sole_layer(s) for s in conv]
        dw, p = layers[-2], _pointwise_args(layers[-1])
        e = _pointwise_args(layers[0]) if len(layers) == 3 else p
        return isinstance(dw, PackedDepthwiseConv2d) and dw.padding == 1 and p is not None and e is not None and e[8] == p[8]

    def layers(self) -> tuple[nn.Module | None, nn.Module, nn.Module]:
        """(expand or None, depthwise, project), read from ``conv`` at each call: whoever swaps a
        layer of ``conv`` (a test's float twin) is followed."""
        return _block_layers(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        return _fused_block(self.conv, x, self.use_residual)


class PackedSeparable(nn.Sequential):
    """A Sequential of [1x1,] depthwise 3x3, 1x1 conv-bn-act stages of packed layers (MobileNet v1's
    depthwise-separable block, ShuffleNet v2's branches) as one fused call: the inverted-residual
    kernel with no residual, so the depthwise input and output never leave the cache. Still a
    Sequential of the same stages, so its state-dict keys do not change."""

    def forward(self, x: Tensor) -> Tensor:
        return _fused_block(self, x, False)


def _fused_block(conv: nn.Sequential, x: Tensor, residual: bool) -> Tensor:
    """[x +] conv(x) for the stages of ``conv`` ([expand,] depthwise, project), in one kernel call."""
    e_layer, d, p_layer = _block_layers(conv)
    if not PackedInvertedResidual.fusable(conv) or d.use_reference:  # the layers in turn (on the spec)
        out = nn.Sequential.forward(conv, x)
        return x + out if residual else out
    if ops.direct(x):
        dw = (d.float_weight(), d.bias, d.stride, d.act_min, d.act_max)
        expand = None if e_layer is None else _pointwise_args(e_layer)
        y = ops.inverted_residual_direct(x, expand, dw, _pointwise_args(p_layer), residual)
        if y is not None:
            return y
    e = (None,) * 9 if e_layer is None else _pointwise_args(e_layer)
    p = _pointwise_args(p_layer)
    dw_w, dw_scale = d.kernel_weight()
    return ops.inverted_residual(x, e[0], e[3], e[4], e[5], e[6], e[7], dw_w, d.bias, d.stride, d.act_min,
                                 d.act_max, p[0], p[3], p[4], p[5], p[6], p[7], residual, dw_scale, p[8])  # fmt: skip


def fuse_inverted_residuals(model: nn.Module) -> nn.Module:
    """Run every MobileNet block of an exported model as one fused call (in place); returns the model.

    A MobileNetV2 block is any module with an nn.Sequential ``conv`` that ``PackedInvertedResidual.fusable``
    accepts and a bool ``use_residual`` (the zoo's InvertedResidual: forward = [x +] conv(x)): it is
    wrapped in PackedInvertedResidual. Any other nn.Sequential that ``fusable`` accepts ([1x1,]
    depthwise, 1x1: MobileNet v1's blocks, ShuffleNet v2's branches) becomes a PackedSeparable.
    """
    block_convs = set()
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            conv = getattr(child, "conv", None)
            residual = getattr(child, "use_residual", None)
            if isinstance(residual, bool) and isinstance(conv, nn.Sequential):
                block_convs.add(id(conv))
                if not isinstance(child, PackedInvertedResidual) and PackedInvertedResidual.fusable(conv):
                    parent._modules[name] = PackedInvertedResidual(conv, residual)
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if (isinstance(child, nn.Sequential) and not isinstance(child, PackedSeparable)
                    and id(child) not in block_convs and PackedInvertedResidual.fusable(child)):  # fmt: skip
                parent._modules[name] = PackedSeparable(OrderedDict(child._modules))
    return model


PACKED_LAYERS: dict[str, type[_Packed]] = {
    cls.kind: cls
    for cls in (PackedTernaryLinear, PackedBinaryLinear, PackedTernaryConv2d, PackedBinaryConv2d,
                PackedDepthwiseConv2d, PackedConv3x3)
}  # fmt: skip


# ---------------------------------------------------------------- BatchNorm folding


@torch.no_grad()
def fold_batchnorm(layer: _Packed, bn: nn.BatchNorm2d | nn.BatchNorm1d) -> _Packed:
    """Fold an eval-mode BatchNorm that follows ``layer`` into its scales and bias (in place).

    BN(y) = a * y + c with a = gamma / sqrt(var + eps), c = beta - a * mean. Every
    output channel of a packed layer is (its scale) x (integer dot) x (activation
    scale) + bias, so a multiplies the scales and the bias becomes a * bias + c.
    A negative a is fine: the kernels only multiply by the scales.
    """
    n = layer.scale_pos.shape[0]
    if layer.act_min is not None or layer.act_max is not None:
        raise ValueError("fold_batchnorm: the layer already ends in a fused activation; fold BN first")
    if bn.num_features != n:
        raise ValueError(f"fold_batchnorm: BatchNorm has {bn.num_features} channels, the layer {n}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_batchnorm: BatchNorm has no running statistics to fold")
    a = bn.running_var.float().add(bn.eps).rsqrt()
    if bn.weight is not None:
        a = a * bn.weight.float()
    c = -a * bn.running_mean.float()
    if bn.bias is not None:
        c = c + bn.bias.float()
    layer.scale_pos.mul_(a)
    if layer.scale_neg is not None:
        layer.scale_neg.mul_(a)
    if layer.bias is None:
        layer.register_buffer("bias", c.clone())
    else:
        layer.bias.mul_(a).add_(c)
    return layer


def fuse_activation(layer: _Packed, act: nn.Module) -> _Packed:
    """Fuse a ReLU / ReLU6 / Hardtanh that follows ``layer`` into its kernel's epilogue (in place).

    The kernels clamp each output while it is still in registers, which saves the
    activation's own pass over the tensor (the largest tensors of a MobileNet).
    """
    if type(act) is nn.ReLU:
        lo, hi = 0.0, None
    elif type(act) in (nn.ReLU6, nn.Hardtanh):
        lo, hi = float(act.min_val), float(act.max_val)
    else:
        raise ValueError(f"fuse_activation: cannot fuse {type(act).__name__} (ReLU, ReLU6, Hardtanh only)")
    if layer.act_min is not None or layer.act_max is not None:
        raise ValueError("fuse_activation: the layer already ends in a fused activation")
    layer._init_clamp(lo, hi)
    return layer


# ---------------------------------------------------------------- one-file save / load


def save_packed(model: nn.Module, path: str | Path, arch: dict[str, Any] | None = None) -> None:
    """Save a model containing packed layers as one file.

    The file holds the state dict, the config of every packed layer by module
    path, and ``arch`` (plain data that tells ``load_packed``'s ``build`` how to
    make the rest of the model, e.g. a student name and its arguments).
    """
    layers = {name: {"kind": m.kind, "config": m.config()} for name, m in model.named_modules()
              if isinstance(m, _Packed)}  # fmt: skip
    torch.save(
        {"format": FORMAT, "arch": arch, "layers": layers, "state_dict": model.state_dict()}, str(path)
    )


def load_packed(
    path: str | Path, build: Callable[[dict[str, Any] | None], nn.Module] | None = None
) -> nn.Module:
    """Load a file written by ``save_packed``.

    ``build(arch)`` makes the model skeleton (its packed layers are then put in
    place from the stored configs). Without ``build``, the file must hold a
    single packed layer saved on its own.
    """
    blob = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not a packed model file (expected format {FORMAT!r})")
    layers = blob["layers"]
    if build is None:
        if list(layers) != [""]:
            raise ValueError(f"{path}: holds a whole model; pass build= to make its skeleton")
        model: nn.Module = _make(layers[""])
    else:
        model = build(blob["arch"])
        for name, spec in layers.items():
            if not name:
                raise ValueError(f"{path}: holds a single layer; load it without build=")
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, _make(spec))
    model.load_state_dict(blob["state_dict"], strict=True)
    return model


def _make(spec: dict[str, Any]) -> _Packed:
    cls = PACKED_LAYERS.get(spec["kind"])
    if cls is None:
        raise ValueError(f"unknown packed layer kind {spec['kind']!r}")
    return cls(**spec["config"])
