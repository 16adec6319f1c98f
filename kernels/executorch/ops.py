"""The packed ops in the form ExecuTorch runs them: out-variants, and whole convolutions as one op.

``to_executorch()`` replaces every functional op by its ``.out`` overload (the runtime
writes into memory-planned buffers) and fails with "Missing out variants" without one.
This module adds ``distill::ternary_linear.out``, ``binary_linear.out`` and
``xnor_linear.out`` to the ops of kernels/ops.py (the schema is derived from theirs, so
the two cannot drift apart), and defines the convolutions as single ops,
``distill::ternary_conv2d_cl`` and ``distill::binary_conv2d_cl`` (+ ``.out``); the fp32
ops of kernels/ops.py (``depthwise_conv2d``, ``conv3x3``, the fused MobileNetV2 block
``inverted_residual``) get their ``.out`` too, and ``distill::mean_hw`` pools a map to [N, C]. In
kernels/ops.py a packed conv is a composite of im2col views and a linear, which an
exported graph would run as permute/pad/as_strided copies between the runtime kernels.
As one op, the runtime kernel (lowbit_et.cpp) reads a channels-last input in place and
writes a channels-last output, the layout XNNPACK's convs use, so no transposes sit
between delegate calls and the packed layers. Their eager forms are the
kernels.ops composites (the same numbers), their fakes say "channels-last out".

Each ``.out`` overload's eager impl is the functional op plus a copy: only the runtime
kernels are meant to run them. Importing this module imports no executorch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels import ops, reference

_lib = torch.library.Library("distill", "FRAGMENT")

# ops of kernels/ops.py that get an .out overload here
KERNEL_OPS = ("ternary_linear", "binary_linear", "xnor_linear", "depthwise_conv2d", "inverted_residual", "conv3x3")
# ops defined here (each with its .out)
OWN_OPS = ("ternary_conv2d_cl", "binary_conv2d_cl", "mean_hw", "concat_shuffle", "slice_channels")


def _out_schema(functional: torch._C.FunctionSchema) -> str:
    """``name.out(args..., *, Tensor(a!) out) -> Tensor(a!)`` from ``name(args...) -> Tensor``."""
    args = str(functional).split("(", 1)[1].rsplit(") ->", 1)[0]
    star = "" if "*" in args else "*, "
    return f"{functional.name.split('::')[1]}.out({args}, {star}Tensor(a!) out) -> Tensor(a!)"


def _define_out(name: str) -> None:
    packet = getattr(torch.ops.distill, name)
    if "out" in packet.overloads():
        return
    _lib.define(_out_schema(packet.default._schema))

    def out_impl(*args, out: Tensor, **kwargs) -> Tensor:
        y = packet.default(*args, **kwargs)
        out.resize_(y.shape)
        return out.copy_(y)

    def out_fake(*args, out: Tensor, **kwargs) -> Tensor:
        return out

    _lib.impl(f"{name}.out", out_impl, "CompositeExplicitAutograd")
    _lib.impl(f"{name}.out", out_fake, "Meta")


def _channels_last_empty(x: Tensor, n: int, ho: int, wo: int) -> Tensor:
    return torch.empty((x.shape[0], n, ho, wo), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)  # fmt: skip


def _conv_out_hw(x: Tensor, kernel_size, stride, padding, dilation) -> tuple[int, int]:
    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(stride)
    (ph, pw), (dh, dw) = _pair(padding), _pair(dilation)
    h, w = x.shape[2], x.shape[3]
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def _pair(v) -> tuple[int, int]:
    v = list(v) if not isinstance(v, int) else [v]
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _as_channels_last(y: Tensor) -> Tensor:
    """A custom op's output must not alias and must match its fake's strides."""
    return y.contiguous(memory_format=torch.channels_last)


@torch.library.custom_op("distill::ternary_conv2d_cl", mutates_args=())
def ternary_conv2d_cl(
    x: Tensor,
    w_packed: Tensor,
    kernel_size: list[int],
    scale_pos: Tensor,
    scale_neg: Tensor | None,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    act_min: float | None = None,
    act_max: float | None = None,
) -> Tensor:
    """kernels.ops.ternary_conv2d as one op; returns NCHW in channels-last memory."""
    y = ops.ternary_conv2d(x, w_packed, tuple(kernel_size), scale_pos, scale_neg, bias, tuple(stride),
                           tuple(padding), tuple(dilation), act_min, act_max)  # fmt: skip
    return _as_channels_last(y)


@ternary_conv2d_cl.register_fake
def _(x, w_packed, kernel_size, scale_pos, scale_neg, bias, stride, padding, dilation, act_min=None, act_max=None):
    return _channels_last_empty(x, scale_pos.shape[0], *_conv_out_hw(x, kernel_size, stride, padding, dilation))


@torch.library.custom_op("distill::binary_conv2d_cl", mutates_args=())
def binary_conv2d_cl(
    x: Tensor,
    w_packed: Tensor,
    kernel_size: list[int],
    scale: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    xnor: bool = False,
    act_scale: bool = True,
    act_min: float | None = None,
    act_max: float | None = None,
) -> Tensor:
    """kernels.ops.binary_conv2d (int8 or, with xnor, binary activations) as one op; channels-last out."""
    y = ops.binary_conv2d(x, w_packed, tuple(kernel_size), scale, bias, tuple(stride), tuple(padding),
                          tuple(dilation), xnor, act_scale, act_min, act_max)  # fmt: skip
    return _as_channels_last(y)


@binary_conv2d_cl.register_fake
def _(x, w_packed, kernel_size, scale, bias, stride, padding, dilation, xnor=False, act_scale=True, act_min=None,
      act_max=None):  # fmt: skip
    return _channels_last_empty(x, scale.shape[0], *_conv_out_hw(x, kernel_size, stride, padding, dilation))


@torch.library.custom_op("distill::mean_hw", mutates_args=())
def mean_hw(x: Tensor) -> Tensor:
    """Global average pooling to [N, C] (kernels.reference.mean_hw). A program's classifier then
    takes plain [N, C] rows: no channels-last [N, C, 1, 1] map crosses into XNNPACK (executorch
    1.5.1's XNNPACK failed on those, "Propagating input shapes failed"), and no copy flattens one."""
    return reference.mean_hw(x)


@mean_hw.register_fake
def _(x):
    return x.new_empty((x.shape[0], x.shape[1]))


@torch.library.custom_op("distill::concat_shuffle", mutates_args=())
def concat_shuffle(a: Tensor, b: Tensor) -> Tensor:
    """ShuffleNet's ``channel_shuffle(cat((a, b), 1), 2)`` for a and b of the same shape: channel 2i
    is a's i-th, 2i + 1 is b's, channels last. One pass over the data, where the exported graph
    had an XNNPACK call of concat, transpose and copy per unit (about 5 us each at 32x32)."""
    c = a.shape[1]
    y = torch.stack((a, b), dim=2).reshape(a.shape[0], 2 * c, a.shape[2], a.shape[3])
    return _as_channels_last(y)


@concat_shuffle.register_fake
def _(a, b):
    return _channels_last_empty(a, 2 * a.shape[1], a.shape[2], a.shape[3])


@torch.library.custom_op("distill::slice_channels", mutates_args=())
def slice_channels(x: Tensor, start: int, length: int) -> Tensor:
    """Channels [start, start + length) of x as a channels-last copy: ShuffleNet's channel split.
    (``chunk`` on a channels-last map is neither layout, and ExecuTorch's portable split then
    refused its channels-last input: "different dim orders".)"""
    return _as_channels_last(x[:, start : start + length])


@slice_channels.register_fake
def _(x, start, length):
    return _channels_last_empty(x, length, x.shape[2], x.shape[3])


for _name in (*KERNEL_OPS, *OWN_OPS):
    _define_out(_name)
