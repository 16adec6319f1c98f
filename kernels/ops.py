"""Packed ternary/binary ops, registered as ``torch.ops.distill.*`` custom ops.

Each op has a fake (meta) implementation so torch.compile and torch.export can
trace through it, and a plain-torch spec in kernels/reference.py. Where it runs:

- CPU: the C++ kernels (kernels/csrc, AVX2/VNNI/AVX-512 + OpenMP), or the
  reference when no compiler is available (with a warning, see kernels/_cpu.py);
- CUDA: the Triton kernels (kernels/triton_ops.py) when triton is installed,
  else the reference on the GPU.

Float ops take x of shape [..., K] (any float dtype; computed in fp32 and
returned in x's dtype). Weights are packed as in kernels/packing.py; scales are
float32 [N]. Threads: ``torch.get_num_threads()``.
"""

import ctypes

import torch
from torch import Tensor

from kernels import _cpu, reference
from kernels._cpu import PW_TERNARY, PW_XNOR, PW_XNOR_UNIT  # noqa: F401  (the fused block's 1x1 kinds)
from kernels.packing import binary_packed_shape, dw_codes_shape, sign_bytes, ternary_packed_shape

__all__ = [
    "quantize_rows_int8",
    "binarize_rows",
    "ternary_mm_int",
    "ternary_linear",
    "binary_mm_int",
    "binary_linear",
    "xnor_mm_int",
    "xnor_linear",
    "ternary_conv2d",
    "binary_conv2d",
    "depthwise_conv2d",
    "inverted_residual",
    "conv3x3",
]


def _use_cpp(t: Tensor) -> bool:
    return t.is_cpu and (_cpu._backend or _cpu.backend()) == "cpp"


def _triton():
    """The Triton module when it can run on this tensor's device, else None."""
    from kernels import triton_ops

    return triton_ops if triton_ops.available() else None


def _check_weights(w: Tensor, shape: tuple[int, int, int], n: int, k: int, name: str) -> None:
    if w.dtype != torch.uint8 or w.shape != shape:
        raise ValueError(
            f"{name}: packed weights for {n} outputs x {k} inputs must be uint8 {list(shape)}, "
            f"got {w.dtype} {list(w.shape)}"
        )


def _check_int8(xq: Tensor, name: str) -> None:
    if xq.dtype != torch.int8 or xq.dim() != 2:
        raise ValueError(f"{name}: activations must be int8 [M, K], got {xq.dtype} {list(xq.shape)}")


def _check_vec(v: Tensor | None, n: int, name: str, what: str) -> Tensor | None:
    if v is None:
        return None
    if v.shape != (n,):
        raise ValueError(f"{name}: {what} must have shape [{n}], got {list(v.shape)}")
    if v.dtype != torch.float32 or not v.is_contiguous():
        v = v.float().contiguous()
    return v


def _rows(x: Tensor, k: int, name: str) -> Tensor:
    if x.shape[-1] != k:
        raise ValueError(f"{name}: input has {x.shape[-1]} features, the packed weights expect {k}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: input must be a float tensor, got {x.dtype}")
    x2 = x if x.dim() == 2 else x.reshape(-1, k)
    if x2.dtype != torch.float32 or not x2.is_contiguous():
        x2 = x2.float().contiguous()
    return x2


def _check_float_2d(x: Tensor, name: str) -> None:
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a float [M, K] tensor, got {x.dtype} {list(x.shape)}")


def _out_shape(x: Tensor, n: int) -> tuple[int, ...]:
    return (*x.shape[:-1], n)


# ---------------------------------------------------------------- activations


@torch.library.custom_op("distill::quantize_rows_int8", mutates_args=())
def quantize_rows_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row absmax int8 quantization of a float [M, K] tensor -> (q int8 [M, K], scale [M])."""
    _check_float_2d(x, "quantize_rows_int8")
    x2 = x.float().contiguous()
    if not _use_cpp(x2):
        return reference.quantize_rows_int8(x2)
    m, k = x2.shape
    q = torch.empty(m, k, dtype=torch.int8)
    scale = torch.empty(m, dtype=torch.float32)
    _cpu.check(
        _cpu.lib().dl_quantize_rows(x2.data_ptr(), m, k, q.data_ptr(), scale.data_ptr(), 1), "quantize"
    )
    return q, scale


@quantize_rows_int8.register_fake
def _(x):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:1], dtype=torch.float32)


@torch.library.custom_op("distill::binarize_rows", mutates_args=())
def binarize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """XNOR activation bits of a float [M, K] tensor (packing.pack_signs), and beta = mean |x| per row."""
    _check_float_2d(x, "binarize_rows")
    x2 = x.float().contiguous()
    if not _use_cpp(x2):
        return reference.binarize_rows(x2)
    m, k = x2.shape
    bits = torch.empty(m, sign_bytes(k), dtype=torch.uint8)
    beta = torch.empty(m, dtype=torch.float32)
    _cpu.check(
        _cpu.lib().dl_binarize_rows(x2.data_ptr(), m, k, bits.data_ptr(), beta.data_ptr(), 1), "binarize"
    )
    return bits, beta


@binarize_rows.register_fake
def _(x):
    m, k = x.shape
    return x.new_empty((m, sign_bytes(k)), dtype=torch.uint8), x.new_empty((m,), dtype=torch.float32)


# ---------------------------------------------------------------- integer GEMMs (exact)


def _int_gemm(fn_name: str, x: Tensor, w: Tensor, n: int, k: int) -> Tensor:
    m = x.shape[0]
    y = torch.empty(m, n, dtype=torch.int32)
    fn = getattr(_cpu.lib(), fn_name)
    _cpu.check(fn(x.data_ptr(), m, k, w.data_ptr(), n, y.data_ptr(), torch.get_num_threads()), fn_name)
    return y


@torch.library.custom_op("distill::ternary_mm_int", mutates_args=())
def ternary_mm_int(xq: Tensor, w_packed: Tensor, n: int) -> Tensor:
    """int32 [M, n]: int8 activations [M, K] times ternary weights [n, K] transposed."""
    _check_int8(xq, "ternary_mm_int")
    k = xq.shape[1]
    _check_weights(w_packed, ternary_packed_shape(n, k), n, k, "ternary_mm_int")
    if not _use_cpp(xq):
        return reference.ternary_mm_int(xq, w_packed, n)
    return _int_gemm("dl_ternary_mm", xq.contiguous(), w_packed.contiguous(), n, k)


@ternary_mm_int.register_fake
def _(xq, w_packed, n):
    return xq.new_empty((xq.shape[0], n), dtype=torch.int32)


@torch.library.custom_op("distill::binary_mm_int", mutates_args=())
def binary_mm_int(xq: Tensor, w_packed: Tensor, n: int) -> Tensor:
    """int32 [M, n]: int8 activations [M, K] times +-1 weights [n, K] transposed."""
    _check_int8(xq, "binary_mm_int")
    k = xq.shape[1]
    _check_weights(w_packed, binary_packed_shape(n, k), n, k, "binary_mm_int")
    if not _use_cpp(xq):
        return reference.binary_mm_int(xq, w_packed, n)
    return _int_gemm("dl_binary_mm", xq.contiguous(), w_packed.contiguous(), n, k)


@binary_mm_int.register_fake
def _(xq, w_packed, n):
    return xq.new_empty((xq.shape[0], n), dtype=torch.int32)


@torch.library.custom_op("distill::xnor_mm_int", mutates_args=())
def xnor_mm_int(x_bits: Tensor, w_packed: Tensor, n: int, k: int) -> Tensor:
    """int32 [M, n]: +-1 activations (packing.pack_signs) times +-1 weights, by XNOR and popcount."""
    _check_weights(w_packed, binary_packed_shape(n, k), n, k, "xnor_mm_int")
    if x_bits.dtype != torch.uint8 or x_bits.dim() != 2 or x_bits.shape[1] != sign_bytes(k):
        raise ValueError(
            f"xnor_mm_int: activation bits must be uint8 [M, {sign_bytes(k)}], "
            f"got {x_bits.dtype} {list(x_bits.shape)}"
        )
    if not _use_cpp(x_bits):
        return reference.xnor_mm_int(x_bits, w_packed, n, k)
    return _int_gemm("dl_xnor_mm", x_bits.contiguous(), w_packed.contiguous(), n, k)


@xnor_mm_int.register_fake
def _(x_bits, w_packed, n, k):
    return x_bits.new_empty((x_bits.shape[0], n), dtype=torch.int32)


# ---------------------------------------------------------------- float linears


def _prepare(x: Tensor, w: Tensor, k: int, scale: Tensor, shape_fn, name: str) -> tuple[Tensor, int]:
    """Validates a float linear's arguments; returns x as contiguous fp32 rows and N."""
    if scale.dim() != 1:
        raise ValueError(f"{name}: scale must be a 1-D [N] tensor, got shape {list(scale.shape)}")
    n = scale.shape[0]
    if k < 1:
        raise ValueError(f"{name}: k must be at least 1, got {k}")
    _check_weights(w, shape_fn(n, k), n, k, name)
    return _rows(x, k, name), n


def _bounds(act_min: float | None, act_max: float | None) -> tuple[float, float]:
    """The C kernels' clamp arguments: -inf / +inf where a bound is not given."""
    lo = float("-inf") if act_min is None else float(act_min)
    return lo, float("inf") if act_max is None else float(act_max)


def _finish(y: Tensor, x: Tensor, n: int) -> Tensor:
    if x.dim() != 2:
        y = y.view(_out_shape(x, n))
    return y if x.dtype == torch.float32 else y.to(x.dtype)


@torch.library.custom_op("distill::ternary_linear", mutates_args=())
def ternary_linear(
    x: Tensor,
    w_packed: Tensor,
    k: int,
    scale_pos: Tensor,
    scale_neg: Tensor | None = None,
    bias: Tensor | None = None,
    act_min: float | None = None,
    act_max: float | None = None,
) -> Tensor:
    """y = x W^T + bias: int8 per-row activations, 2-bit ternary W [N, k] (spec: reference.ternary_linear).

    N is len(scale_pos). scale_neg (TTQ) is the magnitude of the -1 weights; None means symmetric.
    act_min / act_max clamp the output in the kernel's epilogue (a fused ReLU / ReLU6).
    """
    name = "ternary_linear"
    x2, n = _prepare(x, w_packed, k, scale_pos, ternary_packed_shape, name)
    sp = _check_vec(scale_pos, n, name, "scale_pos")
    sn = _check_vec(scale_neg, n, name, "scale_neg")
    b = _check_vec(bias, n, name, "bias")
    if _use_cpp(x2):
        y = torch.empty(x2.shape[0], n, dtype=torch.float32)
        rc = _cpu.lib().dl_ternary_linear(
            x2.data_ptr(), x2.shape[0], k, w_packed.contiguous().data_ptr(), n, sp.data_ptr(),
            _cpu.ptr(sn), _cpu.ptr(b), y.data_ptr(), torch.get_num_threads(), *_bounds(act_min, act_max),
        )  # fmt: skip
        _cpu.check(rc, name)
    elif x2.is_cuda and _triton() is not None:
        y = _triton().ternary_linear(x2, w_packed.contiguous(), k, sp, sn, b)
        y = reference.clamp_output(y, act_min, act_max)
    else:
        y = reference.ternary_linear(x2, w_packed, k, sp, sn, b, act_min, act_max)
    return _finish(y, x, n)


@ternary_linear.register_fake
def _(x, w_packed, k, scale_pos, scale_neg=None, bias=None, act_min=None, act_max=None):
    return x.new_empty(_out_shape(x, scale_pos.shape[0]))


@torch.library.custom_op("distill::binary_linear", mutates_args=())
def binary_linear(
    x: Tensor,
    w_packed: Tensor,
    k: int,
    scale: Tensor,
    bias: Tensor | None = None,
    act_min: float | None = None,
    act_max: float | None = None,
) -> Tensor:
    """Binary weights (scale[n] * +-1) times int8 per-row activations (spec: reference.binary_linear);
    act_min / act_max clamp the output."""
    name = "binary_linear"
    x2, n = _prepare(x, w_packed, k, scale, binary_packed_shape, name)
    s = _check_vec(scale, n, name, "scale")
    b = _check_vec(bias, n, name, "bias")
    if _use_cpp(x2):
        y = torch.empty(x2.shape[0], n, dtype=torch.float32)
        rc = _cpu.lib().dl_binary_linear(
            x2.data_ptr(), x2.shape[0], k, w_packed.contiguous().data_ptr(), n, s.data_ptr(), _cpu.ptr(b),
            y.data_ptr(), torch.get_num_threads(), *_bounds(act_min, act_max),
        )  # fmt: skip
        _cpu.check(rc, name)
    elif x2.is_cuda and _triton() is not None:
        y = _triton().binary_linear(x2, w_packed.contiguous(), k, s, b)
        y = reference.clamp_output(y, act_min, act_max)
    else:
        y = reference.binary_linear(x2, w_packed, k, s, b, act_min, act_max)
    return _finish(y, x, n)


@binary_linear.register_fake
def _(x, w_packed, k, scale, bias=None, act_min=None, act_max=None):
    return x.new_empty(_out_shape(x, scale.shape[0]))


@torch.library.custom_op("distill::xnor_linear", mutates_args=())
def xnor_linear(
    x: Tensor,
    w_packed: Tensor,
    k: int,
    scale: Tensor,
    bias: Tensor | None = None,
    act_scale: bool = True,
    act_min: float | None = None,
    act_max: float | None = None,
) -> Tensor:
    """XNOR-Net linear: sgn(x) (+1 if x > 0 else -1) times binary weights, by XNOR and popcount.

    With act_scale, each row is scaled by its mean |x| (XNOR-Net's K); act_min / act_max clamp
    the output. Spec: reference.xnor_linear.
    """
    name = "xnor_linear"
    x2, n = _prepare(x, w_packed, k, scale, binary_packed_shape, name)
    s = _check_vec(scale, n, name, "scale")
    b = _check_vec(bias, n, name, "bias")
    if _use_cpp(x2):
        y = torch.empty(x2.shape[0], n, dtype=torch.float32)
        rc = _cpu.lib().dl_xnor_linear(
            x2.data_ptr(), x2.shape[0], k, w_packed.contiguous().data_ptr(), n, s.data_ptr(), _cpu.ptr(b),
            int(act_scale), y.data_ptr(), torch.get_num_threads(), *_bounds(act_min, act_max),
        )  # fmt: skip
        _cpu.check(rc, name)
    elif x2.is_cuda and _triton() is not None:
        y = _triton().xnor_linear(x2, w_packed.contiguous(), k, s, b, act_scale)
        y = reference.clamp_output(y, act_min, act_max)
    else:
        y = reference.xnor_linear(x2, w_packed, k, s, b, act_scale, act_min, act_max)
    return _finish(y, x, n)


@xnor_linear.register_fake
def _(x, w_packed, k, scale, bias=None, act_scale=True, act_min=None, act_max=None):
    return x.new_empty(_out_shape(x, scale.shape[0]))


# ---------------------------------------------------------------- convolution (composite)


def ternary_conv2d(
    x: Tensor,
    w_packed: Tensor,
    kernel_size: int | tuple[int, int],
    scale_pos: Tensor,
    scale_neg: Tensor | None = None,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    act_min: float | None = None,
    act_max: float | None = None,
) -> Tensor:
    """Ternary conv2d (groups=1): a 1x1 conv is a channels-last view, kxk goes through im2col;
    both then run ternary_linear. Output is NCHW in channels-last memory."""
    p = reference._pair
    rows, shape = reference.conv_rows(x, p(kernel_size), p(stride), p(padding), p(dilation))
    y = ternary_linear(rows, w_packed, rows.shape[1], scale_pos, scale_neg, bias, act_min, act_max)
    return reference.rows_to_nchw(y, shape)


def binary_conv2d(
    x: Tensor,
    w_packed: Tensor,
    kernel_size: int | tuple[int, int],
    scale: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    xnor: bool = False,
    act_scale: bool = True,
    act_min: float | None = None,
    act_max: float | None = None,
) -> Tensor:
    """Binary-weight conv2d (groups=1) on int8 activations, or binary ones (xnor=True; zero
    padding binarizes to -1, and act_scale scales each patch by its mean |x|)."""
    p = reference._pair
    rows, shape = reference.conv_rows(x, p(kernel_size), p(stride), p(padding), p(dilation))
    if xnor:
        y = xnor_linear(rows, w_packed, rows.shape[1], scale, bias, act_scale, act_min, act_max)
    else:
        y = binary_linear(rows, w_packed, rows.shape[1], scale, bias, act_min, act_max)
    return reference.rows_to_nchw(y, shape)


# ---------------------------------------------------------------- depthwise convolution


def _check_3x3_input(x: Tensor, stride: int, padding: int, name: str) -> tuple[int, int, int, int]:
    """(B, C, H, W) of a float input that the 3x3 kernels (depthwise, stem) support, else a one-line error."""
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a float [B, C, H, W] input, got {x.dtype} {list(x.shape)}")
    b, c, h, w = x.shape
    if stride not in (1, 2) or padding not in (0, 1) or h + 2 * padding < 3 or w + 2 * padding < 3:
        raise ValueError(f"{name}: supports stride 1/2, padding 0/1 and inputs of at least 3x3 padded "
                         f"(got stride {stride}, padding {padding}, {h}x{w})")  # fmt: skip
    return b, c, h, w



def _dw_weight(weight: Tensor, scale: Tensor | None, c: int, name: str) -> Tensor:
    """A depthwise weight as float [3, 3, C]: itself, or its ternary codes (uint8) times ``scale`` [C]."""
    if scale is None:
        return weight
    if scale.shape != (c,) or weight.dtype != torch.uint8 or tuple(weight.shape) != dw_codes_shape(c):
        raise ValueError(f"{name}: a ternary depthwise weight is uint8 {list(dw_codes_shape(c))} codes with a [{c}] "
                         f"scale (got {weight.dtype} {list(weight.shape)}, scale {list(scale.shape)})")  # fmt: skip
    return reference.depthwise_weight(weight, scale)


@torch.library.custom_op("distill::depthwise_conv2d", mutates_args=())
def depthwise_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int = 1,
    padding: int = 1,
    act_min: float | None = None,
    act_max: float | None = None,
    weight_scale: Tensor | None = None,
) -> Tensor:
    """Depthwise 3x3 conv, float32, channels last, BatchNorm folded, ReLU / ReLU6 fused
    (spec: reference.depthwise3x3). weight [3, 3, C], or with ``weight_scale`` [C] ternary codes
    (reference.depthwise_weight); stride 1 or 2; padding 0 or 1.
    Returns NCHW in channels-last memory (what the next packed layer reads without a copy)."""
    name = "depthwise_conv2d"
    weight = _dw_weight(weight, weight_scale, x.shape[1] if x.dim() == 4 else 0, name)
    b, c, h, w = _check_3x3_input(x, stride, padding, name)
    if weight.shape != (3, 3, c):
        raise ValueError(f"{name}: weight must be [3, 3, {c}] (kh, kw, C), got {list(weight.shape)}")
    bv = _check_vec(bias, c, name, "bias")
    if not _use_cpp(x):
        return reference.depthwise3x3(x, weight, bv, stride, padding, act_min, act_max).to(x.dtype)
    xc = x.float().contiguous(memory_format=torch.channels_last)
    wc = weight.float().contiguous()
    ho, wo = reference.conv3x3_out_hw(h, w, stride, padding)
    y = torch.empty(b, c, ho, wo, memory_format=torch.channels_last)
    rc = _cpu.lib().dl_depthwise3x3_nhwc(
        xc.data_ptr(), b, h, w, c, stride, padding, wc.data_ptr(), _cpu.ptr(bv), y.data_ptr(),
        torch.get_num_threads(), *_bounds(act_min, act_max),
    )  # fmt: skip
    _cpu.check(rc, name)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


@depthwise_conv2d.register_fake
def _(x, weight, bias=None, stride=1, padding=1, act_min=None, act_max=None, weight_scale=None):
    b, c, h, w = x.shape
    ho, wo = reference.conv3x3_out_hw(h, w, stride, padding)
    return x.new_empty((b, c, ho, wo)).contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- eager calls without the dispatcher


def direct(x: Tensor) -> bool:
    """True when ``x`` is a plain eager CPU float32 tensor that the C kernels can take straight
    through ctypes, skipping the torch.library dispatcher.

    Why: a custom-op call costs ~15 us in eager mode, a ctypes call ~3 us, and a batch-1
    MobileNet makes 50 of them; at 32x32 that overhead was larger than all its kernels.
    Anything that must see the ops (torch.compile, torch.export's fake tensors, jit tracing,
    dispatch or function modes such as FlopCounterMode, autograd) takes the op path instead.
    """
    return (
        type(x) is Tensor and x.dtype == torch.float32 and x.is_cpu and not x.requires_grad
        and (_cpu._backend or _cpu.backend()) == "cpp" and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._is_torch_function_mode_enabled()
    )  # fmt: skip


def conv1x1_direct(
    x: Tensor, kind: str, w_packed: Tensor, n: int, scale_pos: Tensor, scale_neg: Tensor | None,
    bias: Tensor | None, act_min: float | None, act_max: float | None, act_scale: bool = True,
) -> Tensor | None:  # fmt: skip
    """A 1x1, stride-1, unpadded packed conv (kind: ternary, binary or xnor) on a channels-last
    ``direct`` input, called straight through ctypes; None when x is not channels-last dense
    (the caller then takes the op path). Same kernels, same bits as the ops."""
    b, k, h, w = x.shape
    shape = (ternary_packed_shape if kind == "ternary" else binary_packed_shape)(n, k)
    if not x.is_contiguous(memory_format=torch.channels_last) or w_packed.shape != shape:
        return None  # the op path, which names what is wrong
    y = torch.empty(b, n, h, w, memory_format=torch.channels_last)
    lib, m, lo_hi, nth = _cpu.lib(), b * h * w, _bounds(act_min, act_max), torch.get_num_threads()
    xp, wp, yp, sp, bp = x.data_ptr(), w_packed.data_ptr(), y.data_ptr(), scale_pos.data_ptr(), _cpu.ptr(bias)
    if kind == "ternary":
        rc = lib.dl_ternary_linear(xp, m, k, wp, n, sp, _cpu.ptr(scale_neg), bp, yp, nth, *lo_hi)
    elif kind == "binary":
        rc = lib.dl_binary_linear(xp, m, k, wp, n, sp, bp, yp, nth, *lo_hi)
    else:
        rc = lib.dl_xnor_linear(xp, m, k, wp, n, sp, bp, int(act_scale), yp, nth, *lo_hi)
    _cpu.check(rc, f"{kind} conv 1x1")
    return y


def depthwise_direct(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int,
                     act_min: float | None, act_max: float | None) -> Tensor | None:  # fmt: skip
    """``depthwise_conv2d`` on a channels-last ``direct`` input through ctypes (None: not channels-last,
    or not the weight's channel count: the op path then names what is wrong)."""
    if not x.is_contiguous(memory_format=torch.channels_last) or x.shape[1] != weight.shape[2]:
        return None
    b, c, h, w = x.shape
    ho, wo = reference.conv3x3_out_hw(h, w, stride, padding)
    y = torch.empty(b, c, ho, wo, memory_format=torch.channels_last)
    rc = _cpu.lib().dl_depthwise3x3_nhwc(
        x.data_ptr(), b, h, w, c, stride, padding, weight.data_ptr(), _cpu.ptr(bias), y.data_ptr(),
        torch.get_num_threads(), *_bounds(act_min, act_max),
    )  # fmt: skip
    _cpu.check(rc, "depthwise_conv2d")
    return y


def _pointwise(w_packed: Tensor, k: int, n: int, scale_pos: Tensor, scale_neg: Tensor | None, bias: Tensor | None,
               act_min: float | None, act_max: float | None, kind: int = PW_TERNARY) -> _cpu.Pointwise:  # fmt: skip
    return _cpu.Pointwise(w_packed.data_ptr(), k, n, scale_pos.data_ptr(), _cpu.ptr(scale_neg), _cpu.ptr(bias),
                          *_bounds(act_min, act_max), kind)  # fmt: skip


def inverted_residual_direct(x: Tensor, expand: tuple | None, dw: tuple, project: tuple, residual: bool) -> Tensor | None:
    """A whole MobileNetV2 block in one C call (lowbit.h, dl_inverted_residual_nhwc) on a
    channels-last ``direct`` input; None when x is not channels-last dense.

    expand / project: (w_packed, K, N, scale_pos, scale_neg, bias, act_min, act_max[, kind]) of a 1x1
    ternary conv, or of an XNOR one (kind PW_XNOR / PW_XNOR_UNIT; expand None: no expansion); dw:
    (weight [3, 3, C], bias, stride, act_min, act_max).
    The same bits as running the three layers one after another, without the expanded tensor
    ever leaving the cache.
    """
    k = project[1] if expand is None else expand[1]
    if not x.is_contiguous(memory_format=torch.channels_last) or x.shape[1] != k:
        return None
    b, _, h, w = x.shape
    weight, dw_bias, stride, lo, hi = dw
    n = project[2]
    y = torch.empty(b, n, (h - 1) // stride + 1, (w - 1) // stride + 1, memory_format=torch.channels_last)
    e = None if expand is None else _pointwise(*expand)
    p = _pointwise(*project)
    rc = _cpu.lib().dl_inverted_residual_nhwc(
        x.data_ptr(), b, h, w, None if e is None else ctypes.byref(e), weight.data_ptr(), _cpu.ptr(dw_bias), stride,
        *_bounds(lo, hi), ctypes.byref(p), int(residual), y.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    _cpu.check(rc, "inverted_residual")
    return y


@torch.library.custom_op("distill::inverted_residual", mutates_args=())
def inverted_residual(
    x: Tensor,
    e_w: Tensor | None,
    e_scale_pos: Tensor | None,
    e_scale_neg: Tensor | None,
    e_bias: Tensor | None,
    e_act_min: float | None,
    e_act_max: float | None,
    dw_w: Tensor,
    dw_bias: Tensor | None,
    stride: int,
    dw_act_min: float | None,
    dw_act_max: float | None,
    p_w: Tensor,
    p_scale_pos: Tensor,
    p_scale_neg: Tensor | None,
    p_bias: Tensor | None,
    p_act_min: float | None,
    p_act_max: float | None,
    residual: bool,
    dw_scale: Tensor | None = None,
    pw_kind: int = 0,
) -> Tensor:
    """A whole MobileNetV2 block (spec: reference.inverted_residual): [expand 1x1,] depthwise 3x3
    (padding 1), project 1x1, [+ x], channels last, one kernel call (lowbit.h,
    dl_inverted_residual_nhwc). The 1x1s are ternary (pw_kind PW_TERNARY) or XNOR (PW_XNOR, or
    PW_XNOR_UNIT without beta; scale_neg None). e_* None: no expansion (e_w None). Widths come from
    the scales: Cmid = len(e_scale_pos) (or C_in), C_out = len(p_scale_pos). ``dw_scale``: the
    depthwise weight is ternary codes (as depthwise_conv2d's ``weight_scale``)."""
    name = "inverted_residual"
    c = x.shape[1]
    cmid = c if e_w is None else e_scale_pos.shape[0]
    dw_w = _dw_weight(dw_w, dw_scale, cmid, name)
    n = p_scale_pos.shape[0]
    if pw_kind not in (PW_TERNARY, PW_XNOR, PW_XNOR_UNIT) or (pw_kind and (e_scale_neg is not None or p_scale_neg is not None)):
        raise ValueError(f"{name}: pw_kind must be 0 (ternary), 1 or 2 (XNOR, no scale_neg); got {pw_kind}")
    packed_shape = ternary_packed_shape if pw_kind == PW_TERNARY else binary_packed_shape
    expand = None if e_w is None else (e_w, e_scale_pos, e_scale_neg, e_bias, e_act_min, e_act_max)
    if expand is not None:
        _check_weights(e_w, packed_shape(cmid, c), cmid, c, name)
    _check_weights(p_w, packed_shape(n, cmid), n, cmid, name)
    if dw_w.shape != (3, 3, cmid) or stride not in (1, 2) or (residual and (stride != 1 or n != c)):
        raise ValueError(f"{name}: depthwise weight must be [3, 3, {cmid}], stride 1 or 2, and a residual "
                         f"block stride 1 with C_out == C_in (got {list(dw_w.shape)}, {stride}, {c} -> {n})")  # fmt: skip
    if x.is_cpu and _use_cpp(x) and x.dim() == 4:
        xc = x.float().contiguous(memory_format=torch.channels_last)
        vecs = lambda vs, m, what: [_check_vec(v, m, name, what) for v in vs]  # noqa: E731
        e = None
        if expand is not None:
            e = (e_w.contiguous(), c, cmid, *vecs((e_scale_pos, e_scale_neg, e_bias), cmid, "an expand vector"),
                 e_act_min, e_act_max, pw_kind)  # fmt: skip
        p = (p_w.contiguous(), cmid, n, *vecs((p_scale_pos, p_scale_neg, p_bias), n, "a project vector"), p_act_min,
             p_act_max, pw_kind)  # fmt: skip
        dw = (dw_w.float().contiguous(), _check_vec(dw_bias, cmid, name, "dw_bias"), stride, dw_act_min, dw_act_max)
        return inverted_residual_direct(xc, e, dw, p, residual).to(x.dtype)
    project = (p_w, p_scale_pos, p_scale_neg, p_bias, p_act_min, p_act_max)
    dw = (dw_w, dw_bias, stride, dw_act_min, dw_act_max)
    return reference.inverted_residual(x, expand, dw, project, residual, pw_kind).to(x.dtype)


@inverted_residual.register_fake
def _(x, e_w, e_scale_pos, e_scale_neg, e_bias, e_act_min, e_act_max, dw_w, dw_bias, stride, dw_act_min, dw_act_max,
      p_w, p_scale_pos, p_scale_neg, p_bias, p_act_min, p_act_max, residual, dw_scale=None, pw_kind=0):  # fmt: skip
    b, _, h, w = x.shape
    n = p_scale_pos.shape[0]
    return x.new_empty((b, n, (h - 1) // stride + 1, (w - 1) // stride + 1)).contiguous(memory_format=torch.channels_last)


@torch.library.custom_op("distill::conv3x3", mutates_args=())
def conv3x3(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int = 1,
    padding: int = 1,
    act_min: float | None = None,
    act_max: float | None = None,
) -> Tensor:
    """Dense 3x3 conv in float32 for few input channels (a stem), BN folded, clamp fused
    (spec: reference.conv3x3). weight [3, 3, Cin, Cout]; x NCHW in any memory format (the
    kernel reads it through its strides); returns NCHW in channels-last memory."""
    name = "conv3x3"
    b, c, h, w = _check_3x3_input(x, stride, padding, name)
    if weight.dim() != 4 or weight.shape[:3] != (3, 3, c):
        raise ValueError(f"{name}: weight must be [3, 3, {c}, C_out], got {list(weight.shape)}")
    bv = _check_vec(bias, weight.shape[3], name, "bias")
    if not _use_cpp(x):
        return reference.conv3x3(x, weight, bv, stride, padding, act_min, act_max).to(x.dtype)
    y = conv3x3_direct(x.float(), weight.float().contiguous(), bv, stride, padding, act_min, act_max)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


@conv3x3.register_fake
def _(x, weight, bias=None, stride=1, padding=1, act_min=None, act_max=None):
    b, c, h, w = x.shape
    ho, wo = reference.conv3x3_out_hw(h, w, stride, padding)
    return x.new_empty((b, weight.shape[3], ho, wo)).contiguous(memory_format=torch.channels_last)


def conv3x3_direct(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int,
                   act_min: float | None, act_max: float | None) -> Tensor:  # fmt: skip
    """``conv3x3`` through ctypes on a float32 CPU input of any strides (``direct`` inputs)."""
    b, c, h, w = x.shape
    if c != weight.shape[2]:
        raise RuntimeError(f"conv3x3: expected input [B, {weight.shape[2]}, H, W], got {list(x.shape)}")
    cout = weight.shape[3]
    ho, wo = reference.conv3x3_out_hw(h, w, stride, padding)
    y = torch.empty(b, cout, ho, wo, memory_format=torch.channels_last)
    sb, sc, sh, sw = x.stride()
    rc = _cpu.lib().dl_conv3x3_nhwc(
        x.data_ptr(), b, h, w, c, sb, sh, sw, sc, cout, stride, padding, weight.data_ptr(), _cpu.ptr(bias),
        y.data_ptr(), torch.get_num_threads(), *_bounds(act_min, act_max),
    )  # fmt: skip
    _cpu.check(rc, "conv3x3")
    return y
