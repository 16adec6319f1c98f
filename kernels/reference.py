"""Plain-torch reference implementations: the spec of every packed kernel.

The C++ and Triton kernels must match these: exactly for the integer results,
and to fp32 rounding for the float ones (the float epilogue below is written in
the same order as the kernels', so in practice they agree bit for bit).

Integer products run on BLAS as float matmuls (``_int_mm``), which are exact for these
sizes, on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.packing import pack_signs, unpack_binary, unpack_dw_ternary, unpack_signs, unpack_ternary


def _int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact a @ b.T for int8 activations a [M, K] and int8 weight codes b [N, K] in {-1, 0, +1}, as int32.

    Every partial sum is an integer below 128 * K: float32 holds it exactly, in any summation
    order, while 128 * K < 2**24 (K < 131,072) and matmuls run in full fp32 (no TF32 / bf16
    shortcuts); float64 (exact below 2**53) otherwise.
    """
    full = torch.get_float32_matmul_precision() == "highest"
    dtype = torch.float32 if 128 * a.shape[1] < 2**24 and full else torch.float64
    return (a.to(dtype) @ b.to(dtype).T).to(torch.int32)


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantization of a float [M, K] tensor.

    scale = absmax / 127, q = round_half_even(x * (127 / absmax)) (0 for an all-zero row).
    Returns (q int8 [M, K], scale float32 [M]).
    """
    x = x.float()
    amax = x.abs().amax(dim=1)
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    q = torch.round(x * inv[:, None]).clamp(-127, 127).to(torch.int8)
    return q, amax / 127.0


def row_abs_mean(x: torch.Tensor) -> torch.Tensor:
    """mean |x| per row of a float [M, K] tensor, as float32, with an exact sum.

    Each |x| is first rounded to a multiple of 2**(e - 29), e the exponent of the row's absmax
    (by adding and subtracting 1.5 * 2**(e + 23) in float64); a float64 then holds any sum of
    K < 2**24 such values exactly, so the result does not depend on the summation order and
    every kernel (SIMD lanes, threads, GPU blocks) gets the same float as this spec.
    """
    a = x.float().abs().double()
    _, e = torch.frexp(a.amax(dim=1, keepdim=True))
    c = torch.ldexp(torch.full_like(a[:, :1], 1.5), e + 23)
    return (((a + c) - c).sum(dim=1) / x.shape[1]).float()


def binarize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """XNOR-Net activations: sign bits (x > 0: +1, else -1; packing.pack_signs), beta = mean |x| per row
    (``row_abs_mean``)."""
    x = x.float()
    return pack_signs(x), row_abs_mean(x)


def clamp_output(y: torch.Tensor, act_min: float | None, act_max: float | None) -> torch.Tensor:
    """The fused activation of the float linears: y clamped to [act_min, act_max] (None: open)."""
    return y if act_min is None and act_max is None else y.clamp(act_min, act_max)


def ternary_mm_int(xq: torch.Tensor, w_packed: torch.Tensor, n: int) -> torch.Tensor:
    """int32 [M, n] = int8 activations [M, K] times the ternary weights [n, K] transposed."""
    return _int_mm(xq, unpack_ternary(w_packed, n, xq.shape[1]))


def ternary_linear(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    k: int,
    scale_pos: torch.Tensor,
    scale_neg: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    act_min: float | None = None,
    act_max: float | None = None,
) -> torch.Tensor:
    """y = x W^T (+ bias) with x quantized to int8 per row and W ternary, then clamped to
    [act_min, act_max] when either is given (a fused ReLU / ReLU6).

    Symmetric (TWN): W[n] = scale_pos[n] * codes[n].
    Asymmetric (TTQ): W[n] = +scale_pos[n] where code is +1, -scale_neg[n] where it is -1.
    """
    lead, x2 = x.shape[:-1], x.reshape(-1, k)
    q, sx = quantize_rows_int8(x2)
    codes = unpack_ternary(w_packed, scale_pos.shape[0], k)
    if scale_neg is None:
        y = (_int_mm(q, codes).float() * scale_pos) * sx[:, None]
    else:
        pos = _int_mm(q, (codes > 0).to(torch.int8)).float()
        neg = _int_mm(q, (codes < 0).to(torch.int8)).float()
        y = (pos * scale_pos - neg * scale_neg) * sx[:, None]
    if bias is not None:
        y = y + bias
    return clamp_output(y, act_min, act_max).reshape(*lead, y.shape[-1])


def binary_mm_int(xq: torch.Tensor, w_packed: torch.Tensor, n: int) -> torch.Tensor:
    """int32 [M, n] = int8 activations [M, K] times the +-1 weights [n, K] transposed."""
    return _int_mm(xq, unpack_binary(w_packed, n, xq.shape[1]))


def binary_linear(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    k: int,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    act_min: float | None = None,
    act_max: float | None = None,
) -> torch.Tensor:
    """Binary weights (W[n] = scale[n] * signs[n]) times int8 per-row activations (then clamped)."""
    lead, x2 = x.shape[:-1], x.reshape(-1, k)
    q, sx = quantize_rows_int8(x2)
    y = (_int_mm(q, unpack_binary(w_packed, scale.shape[0], k)).float() * scale) * sx[:, None]
    if bias is not None:
        y = y + bias
    return clamp_output(y, act_min, act_max).reshape(*lead, y.shape[-1])


def xnor_mm_int(x_bits: torch.Tensor, w_packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """int32 [M, n] = +-1 activations (packed signs) times +-1 weights: k - 2 * popcount(x xor w)."""
    return _int_mm(unpack_signs(x_bits, k), unpack_binary(w_packed, n, k))


def xnor_linear(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    k: int,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    act_scale: bool = True,
    act_min: float | None = None,
    act_max: float | None = None,
) -> torch.Tensor:
    """XNOR-Net linear: sgn(x) * beta times binary weights; beta = mean |x| per row (1 if not act_scale);
    then clamped to [act_min, act_max]."""
    lead, x2 = x.shape[:-1], x.reshape(-1, k)
    bits, beta = binarize_rows(x2)
    if not act_scale:
        beta = torch.ones_like(beta)
    y = (xnor_mm_int(bits, w_packed, scale.shape[0], k).float() * scale) * beta[:, None]
    if bias is not None:
        y = y + bias
    return clamp_output(y, act_min, act_max).reshape(*lead, y.shape[-1])


# ---------------------------------------------------------------- convolution


def conv_rows(
    x: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """im2col, channels last: NCHW input -> rows [B*Ho*Wo, kh*kw*C], one row per output pixel.

    A row lists its receptive field in (kh, kw, C) order, the order of
    ``conv_weight_rows(weight)``. Working on the NHWC view, every window is kh*kw
    contiguous runs of C values, so the copy is fast; a 1x1 convolution without
    padding is only a (strided) view. Returns the rows and (B, Ho, Wo).
    """
    b, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xh = x.permute(0, 2, 3, 1)  # NHWC; free when x is channels_last, as packed convs return
    if (kh, kw) == (1, 1) and (ph, pw) == (0, 0):
        return xh[:, ::sh, ::sw].reshape(b * ho * wo, c), (b, ho, wo)
    xh = F.pad(xh, (0, 0, pw, pw, ph, ph)) if ph or pw else xh.contiguous()
    s_b, s_h, s_w, s_c = xh.stride()
    win = xh.as_strided((b, ho, wo, kh, kw, c), (s_b, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c))
    return win.reshape(b * ho * wo, kh * kw * c), (b, ho, wo)


def conv_weight_rows(weight: torch.Tensor) -> torch.Tensor:
    """Conv weight [O, C, kh, kw] -> [O, kh*kw*C], the column order of ``conv_rows``."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def conv_weight_from_rows(rows: torch.Tensor, in_channels: int, kernel_size: tuple[int, int]) -> torch.Tensor:
    """Inverse of ``conv_weight_rows``: [O, kh*kw*C] -> [O, C, kh, kw]."""
    kh, kw = kernel_size
    return rows.reshape(rows.shape[0], kh, kw, in_channels).permute(0, 3, 1, 2)


def rows_to_nchw(y: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """[B*Ho*Wo, O] -> NCHW [B, O, Ho, Wo] (a channels-last view, no copy)."""
    b, ho, wo = shape
    return y.view(b, ho, wo, -1).permute(0, 3, 1, 2)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def ternary_conv2d(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    kernel_size: int | tuple[int, int],
    scale_pos: torch.Tensor,
    scale_neg: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    act_min: float | None = None,
    act_max: float | None = None,
) -> torch.Tensor:
    """Ternary conv2d (groups=1) as im2col + ternary_linear; activations quantized per patch.

    w_packed holds ``conv_weight_rows(weight)`` (columns in (kh, kw, C) order).
    """
    ks = _pair(kernel_size)
    rows, shape = conv_rows(x, ks, _pair(stride), _pair(padding), _pair(dilation))
    y = ternary_linear(rows, w_packed, rows.shape[1], scale_pos, scale_neg, bias, act_min, act_max)
    return rows_to_nchw(y, shape)


def binary_conv2d(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    kernel_size: int | tuple[int, int],
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    xnor: bool = False,
    act_scale: bool = True,
    act_min: float | None = None,
    act_max: float | None = None,
) -> torch.Tensor:
    """Binary-weight conv2d (groups=1): int8 activations per patch, or binary ones (xnor=True).

    XNOR: zero padding binarizes to -1 and counts in beta (the mean |x| of each patch).
    """
    ks = _pair(kernel_size)
    rows, shape = conv_rows(x, ks, _pair(stride), _pair(padding), _pair(dilation))
    if xnor:
        y = xnor_linear(rows, w_packed, rows.shape[1], scale, bias, act_scale, act_min, act_max)
    else:
        y = binary_linear(rows, w_packed, rows.shape[1], scale, bias, act_min, act_max)
    return rows_to_nchw(y, shape)


# ---------------------------------------------------------------- depthwise convolution


def _check_channels(x: torch.Tensor, c: int, name: str) -> None:
    """A RuntimeError, as torch's own convs raise for a wrong input width."""
    if x.dim() != 4 or x.shape[1] != c:
        raise RuntimeError(f"{name}: expected input [B, {c}, H, W], got {list(x.shape)}")


def conv3x3_out_hw(h: int, w: int, stride: int, padding: int) -> tuple[int, int]:
    """Output height and width of a 3x3 window with this stride and padding (every 3x3 op here)."""
    return (h + 2 * padding - 3) // stride + 1, (w + 2 * padding - 3) // stride + 1


def fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a * b + c rounded once to float32 (IEEE fused multiply-add, ties to even), for float32
    values (in float32 or float64 tensors; broadcasting as a * b + c): the tap of the 3x3 conv
    kernels. Every ISA's FMA (x86 vfmadd, NEON vfma, C fmaf) rounds exactly so, and one
    instruction per tap instead of a multiply and an add is what the compute-bound depthwise
    conv and stem gain from it."""
    acc = torch.broadcast_tensors(a, b, c)[2].float().clone()
    return FmaChain(acc).step(a, b)


class FmaChain:
    """acc = fma32(a, b, acc), step after step, in place on a float32 ``acc``: a conv's taps.

    In float64 the product is exact (24 + 24 bits), so s = a * b + acc is rounded once there;
    rounding s to float32 is then right unless s landed exactly on a midpoint between two floats
    that a * b + acc was not on (double rounding). Only a float64 whose last 29 mantissa bits are
    1 and 28 zeros is such a midpoint (or one whose float is subnormal, checked too): on those few
    elements TwoSum gives what s lost, and its sign says on which side of the midpoint the exact
    value lies, so which float is the answer. The float64 work tensors are kept from step to step
    (a fresh 8-byte-per-element tensor per operation cost more in page faults than the arithmetic).
    """

    def __init__(self, acc: torch.Tensor):
        self.acc = acc
        self.c = acc.double()
        self.s = torch.empty_like(self.c)
        self.bits = torch.empty_like(self.c, dtype=torch.int64)
        self.bits32 = torch.empty_like(acc, dtype=torch.int32)
        self.maybe, self.tiny, self.nonzero = (torch.empty_like(acc, dtype=torch.bool) for _ in range(3))

    def step(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a.double(), b.double()
        s, acc = torch.addcmul(self.c, a, b, out=self.s), self.acc  # exact product: one rounding
        acc.copy_(s)
        torch.eq(torch.bitwise_and(s.view(torch.int64), 0x1FFFFFFF, out=self.bits), 0x10000000, out=self.maybe)
        torch.eq(torch.bitwise_and(acc.view(torch.int32), 0x7F000000, out=self.bits32), 0, out=self.tiny)
        self.maybe |= self.tiny.logical_and_(torch.ne(s, 0, out=self.nonzero))  # |acc| < 2^-125; zeros are exact
        if bool(self.maybe.any()):
            idx = self.maybe.nonzero(as_tuple=True)
            pm, cm, sm, rm = (a * b).expand_as(s)[idx], self.c[idx], s[idx], acc[idx]
            bb = sm - pm
            lost = (pm - (sm - bb)) + (cm - bb)  # a * b + c == s + lost exactly (TwoSum)
            r64 = rm.double()
            d = sm - r64  # exact: s is within a float spacing of acc
            t = r64 + 2 * d  # when s is a midpoint: the float on its other side
            other = (d != 0) & (t.float().double() == t) & (lost != 0) & ((lost > 0) == (d > 0))
            acc[idx] = torch.where(other, t.float(), rm)
        self.c.copy_(acc)
        return acc


def _taps(x: torch.Tensor, stride: int, padding: int, ho: int, wo: int):
    """The nine (kh, kw, input window) of a 3x3 conv over ``x`` zero-padded, in (kh, kw) order:
    the order the kernels accumulate in."""
    # float64 (exact for float32 values: fma32 takes them so) and channels last like the
    # accumulator, so each tap's elementwise ops run over one memory order
    xp = F.pad(x.float(), (padding,) * 4).double().contiguous(memory_format=torch.channels_last)
    for i in range(3):
        for j in range(3):
            yield i, j, xp[:, :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]


def depthwise3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 1,
    act_min: float | None = None,
    act_max: float | None = None,
) -> torch.Tensor:
    """Depthwise 3x3 conv (groups = channels) in float32, in the kernels' exact arithmetic.

    x: [B, C, H, W]; weight: [3, 3, C] (a torch depthwise weight [C, 1, 3, 3] permuted to
    (kh, kw, C), BatchNorm folded in); bias [C] or None. Each output is
    acc = 0; acc = fma32(x_tap, w_tap, acc) over the taps in (kh, kw) order; y = acc + bias,
    then clamped (a fused ReLU / ReLU6). Each tap is rounded once (a fused multiply-add), so the
    C kernels (lowbit.h, DlDepthwise) give these bits exactly on every ISA, and a result can
    differ from F.conv2d by float rounding. Returns NCHW in channels-last memory.
    """
    b, c, h, w = x.shape
    _check_channels(x, weight.shape[2], "depthwise3x3")
    ho, wo = conv3x3_out_hw(h, w, stride, padding)
    taps = FmaChain(torch.zeros(b, c, ho, wo).contiguous(memory_format=torch.channels_last))
    for i, j, xs in _taps(x, stride, padding, ho, wo):
        taps.step(xs, weight[i, j].float().view(1, c, 1, 1))
    acc = taps.acc
    if bias is not None:
        acc = acc + bias.float().view(1, c, 1, 1)
    return clamp_output(acc, act_min, act_max).contiguous(memory_format=torch.channels_last)


def inverted_residual(
    x: torch.Tensor,
    expand: tuple | None,
    dw: tuple,
    project: tuple,
    residual: bool,
    kind: int = 0,
) -> torch.Tensor:
    """A MobileNetV2 block as its three layers in turn: the spec of the fused kernel
    (lowbit.h, dl_inverted_residual_nhwc), which must give exactly these bits.

    expand / project: (w_packed, scale_pos, scale_neg, bias, act_min, act_max) of a 1x1
    ternary conv (expand None: none), or with kind 1 / 2 of an XNOR conv (scale_pos its scale,
    scale_neg None; 2: no beta); dw: (weight [3, 3, C], bias, stride, act_min, act_max),
    padding 1. residual: y = x + project(...).
    """
    def pointwise(t, p):
        w, sp, sn, b, lo, hi = p
        if kind:
            return binary_conv2d(t, w, 1, sp, b, xnor=True, act_scale=kind == 1, act_min=lo, act_max=hi)
        return ternary_conv2d(t, w, 1, sp, sn, b, act_min=lo, act_max=hi)

    e = x if expand is None else pointwise(x, expand)
    weight, bias, stride, lo, hi = dw
    out = pointwise(depthwise3x3(e, weight, bias, stride, 1, lo, hi), project)
    return x + out if residual else out


def conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 1,
    act_min: float | None = None,
    act_max: float | None = None,
) -> torch.Tensor:
    """Dense 3x3 conv in float32 in the kernels' exact arithmetic (lowbit.h, DlConv3x3): the stem.

    x: [B, Cin, H, W]; weight [3, 3, Cin, Cout] (torch's [Cout, Cin, 3, 3] permuted). Each output
    is acc = 0; acc = fma32(x, w, acc) over (kh, kw, ci) in that order; y = clamp(acc + bias).
    Returns NCHW in channels-last memory.
    """
    b, cin, h, w = x.shape
    _check_channels(x, weight.shape[2], "conv3x3")
    cout = weight.shape[3]
    ho, wo = conv3x3_out_hw(h, w, stride, padding)
    taps = FmaChain(torch.zeros(b, cout, ho, wo).contiguous(memory_format=torch.channels_last))
    for i, j, xs in _taps(x, stride, padding, ho, wo):
        for ci in range(cin):
            taps.step(xs[:, ci : ci + 1], weight[i, j, ci].float().view(1, cout, 1, 1))
    acc = taps.acc
    if bias is not None:
        acc = acc + bias.float().view(1, cout, 1, 1)
    return clamp_output(acc, act_min, act_max).contiguous(memory_format=torch.channels_last)


def mean_hw(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling [N, C, H, W] -> [N, C] in float32, in a fixed order: the pixels summed
    one after another in row-major order, then divided by H * W (the ExecuTorch kernel's order)."""
    x = x.float()
    acc = torch.zeros(x.shape[:2], dtype=torch.float32, device=x.device)
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            acc = acc + x[:, :, i, j]
    return acc / float(x.shape[2] * x.shape[3])


def depthwise_weight(weight: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 depthwise weight [3, 3, C] of either form: ``weight`` itself (float), or with
    ``scale`` [C] the ternary codes ``weight`` (kernels.packing.pack_dw_ternary, uint8) times the
    channel's scale, exactly (code in {-1, 0, +1})."""
    if scale is None:
        return weight.float()
    return unpack_dw_ternary(weight, scale.shape[0]).float() * scale.float()
