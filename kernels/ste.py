"""Straight-through estimators (STE) for low-precision training: the plain-torch spec.

Every quantizer here maps a full-precision ("latent") tensor to a low-precision one
in the forward pass and passes a chosen surrogate gradient back in the backward
pass. Each comes as a `torch.autograd.Function` (the exact backward rule, written
out so it can be read and tested) and a functional wrapper (what layers call).
The packed kernels and the export code treat these functions as the reference
they must reproduce.

Sign convention, used everywhere in this file (weights and activations):

    sgn(x) = +1 if x > 0 else -1

so binary values are exactly {-1, +1} (`torch.sign` would give 0 at 0). For
activations that come out of a ReLU this makes sgn(relu(y)) == sgn(y), i.e. a
binary conv placed after Conv -> BN -> ReLU sees the same bits as XNOR-Net's
BN -> BinActiv -> BinConv order. A packed kernel stores bit = (x > 0).

Schemes and papers:
  binary-connect  Courbariaux et al. 2015, BinaryConnect
  xnor            Rastegari et al. 2016, XNOR-Net (weights + activations)
  twn             Li & Liu 2016, Ternary Weight Networks
  ttq             Zhu et al. 2017, Trained Ternary Quantization
  dorefa          Zhou et al. 2016, DoReFa-Net (k-bit weights and activations)
  int8            QAT with torch.ao.quantization fake-quant modules
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor
from torch.ao.quantization.fake_quantize import FusedMovingAvgObsFakeQuantize
from torch.ao.quantization.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

__all__ = [
    "sgn",
    "hard_sigmoid",
    "SignSTE",
    "StochasticSignSTE",
    "SignHardTanhSTE",
    "XnorWeightSTE",
    "TernarySTE",
    "TTQWeightSTE",
    "RoundSTE",
    "binary_connect_weight",
    "binary_connect_scale",
    "clip_latent_",
    "xnor_alpha",
    "xnor_weight",
    "binary_activation",
    "xnor_input_scale",
    "twn_threshold",
    "twn_alpha",
    "twn_weight",
    "ternary_codes",
    "ttq_threshold",
    "ttq_init_scales",
    "ttq_weight",
    "TTQ_GRADS",
    "quantize_k",
    "dorefa_weight",
    "dorefa_weight_codes",
    "dorefa_activation",
    "int8_weight",
    "int8_fake_quant_factories",
]


def _filter_dims(w: Tensor) -> tuple[int, ...]:
    """All dims but the first: the dims of one output filter (Conv2d: in/g, kh, kw; Linear: in)."""
    return tuple(range(1, w.dim()))


def sgn(x: Tensor) -> Tensor:
    """sgn(x) = +1 if x > 0 else -1, in x's dtype."""
    return (x > 0).to(x.dtype) * 2 - 1


def hard_sigmoid(x: Tensor) -> Tensor:
    """sigma(x) = clip((x + 1) / 2, 0, 1)."""
    return ((x + 1) / 2).clamp(0, 1)


# --------------------------------------------------------------------------- autograd Functions


class SignSTE(torch.autograd.Function):
    """Deterministic BinaryConnect binarization.

    forward:  w_b = sgn(w)                       in {-1, +1}
    backward: dL/dw = dL/dw_b                    (identity; the paper's estimator, with
                                                  latent weights clipped to [-1, 1])
    """

    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:
        return sgn(w)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class StochasticSignSTE(torch.autograd.Function):
    """Stochastic BinaryConnect binarization.

    forward:  w_b = +1 with probability sigma(w), else -1,  sigma(w) = clip((w + 1) / 2, 0, 1)
    backward: dL/dw = dL/dw_b                    (identity)
    """

    @staticmethod
    def forward(ctx, w: Tensor, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype)
        return (u < hard_sigmoid(w)).to(w.dtype) * 2 - 1

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class SignHardTanhSTE(torch.autograd.Function):
    """Binary activation with the hard-tanh STE (BNN / XNOR-Net BinActiv).

    forward:  x_b = sgn(x)                       in {-1, +1}
    backward: dL/dx = dL/dx_b * 1{|x| <= 1}      (derivative of hardtanh(x) = clip(x, -1, 1))
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x.abs() <= 1)  # a bool mask: a quarter of the memory of x
        return sgn(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype)


class XnorWeightSTE(torch.autograd.Function):
    """XNOR-Net weight binarization with a per-output-filter scale.

    forward:  alpha_o = mean_i |W_o,i|   (n = elements of one filter)
              Wq_o,i  = alpha_o * sgn(W_o,i)
    backward: the chain rule through alpha and the hard-tanh STE for sgn:
              dL/dW_o,i = alpha_o * 1{|W_o,i| <= 1} * g_o,i + sign(W_o,i) / n * sum_j g_o,j * sgn(W_o,j)
              with g = dL/dWq. (The paper prints the elementwise shorthand
              g * (1/n + alpha * dsign/dW); the sum over the filter is the exact form.)
    """

    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:
        alpha = w.abs().mean(dim=_filter_dims(w), keepdim=True)
        ctx.save_for_backward(w, alpha)
        return alpha * sgn(w)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        w, alpha = ctx.saved_tensors
        dims = _filter_dims(w)
        n = w[0].numel()
        through_sign = alpha * (w.abs() <= 1).to(grad.dtype) * grad
        through_alpha = torch.sign(w) * (grad * sgn(w)).sum(dim=dims, keepdim=True) / n
        return through_sign + through_alpha


class TernarySTE(torch.autograd.Function):
    """TWN ternarization with a fixed (non-learned) per-layer scale.

    forward:  Wq_i = alpha * sgn(W_i) * 1{|W_i| > delta}      in {-alpha, 0, +alpha}
    backward: dL/dW = dL/dWq                                   (identity, as in the TWN paper)
    """

    @staticmethod
    def forward(ctx, w: Tensor, delta: Tensor, alpha: Tensor) -> Tensor:
        return alpha * ternary_codes(w, delta).to(w.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad, None, None


class TTQWeightSTE(torch.autograd.Function):
    """Trained Ternary Quantization with learned scales Wp, Wn > 0 (one pair per layer).

    forward:  Wq_i = +Wp if W_i > delta;  0 if |W_i| <= delta;  -Wn if W_i < -delta
    with g = dL/dWq, I_p = {W > delta}, I_n = {W < -delta}, I_z = {|W| <= delta}; delta is not
    differentiated. Two backward rules (`grads`):

    "paper" (TTQ paper, eqs. 6-7, as printed):
              dL/dWp  =  sum_{i in I_p} g_i
              dL/dWn  = -sum_{i in I_n} g_i      (the paper prints it without the minus;
                                                  with Wq = -Wn on I_n the chain rule has it)
              dL/dW_i = Wp * g_i on I_p;  g_i on I_z;  Wn * g_i on I_n

    "normalized" (the default of `ttq_weight` and the layers), a deliberate deviation:
              dL/dWp  =  mean_{i in I_p} g_i     (0 if I_p is empty)
              dL/dWn  = -mean_{i in I_n} g_i
              dL/dW_i = (Wp / s) g_i on I_p;  g_i on I_z;  (Wn / s) g_i on I_n,  s = (Wp + Wn) / 2
              times 1{|W_i| <= bound} when a `bound` is given (the layers pass the max |W| of
              the weight they started from)
      Why: the paper states its rule for latent weights normalized to [-1, 1], where the
      factors Wp, Wn and the 1 of the zero band are of one order. In a net's own units (He
      init: |W| ~ 0.01-0.3) the +-Wp weights then learn 3-100x slower than the zero band, and
      the scales' gradient, a sum over every weight of the layer (up to ~1e5), makes one
      plain-SGD step on Wp, Wn larger than the scales themselves: they turn negative within a
      few steps and the net collapses (MobileNet v1 on digits: chance accuracy). The normalized
      rule is free of both units: the factors keep the paper's asymmetry (the side with the
      larger scale gets the larger gradient) with mean 1 (when Wp == Wn it is TWN's identity
      STE), and the scale gradient is the mean demand of the weights that share the scale,
      the size of one weight's gradient whatever the layer's size. The bound is the hard-tanh
      STE of BinaryConnect / XNOR-Net (gradient only inside [-bound, bound]): beyond delta the
      forward ignores |W|, so nothing else stops a latent weight with a steady gradient from
      drifting outwards, and since delta = t * max|W| a few drifting weights raise delta until
      most of the layer is zero (measured: 94% zeros, max/mean |W| of 65 after 10 epochs).
      It is the paper's gradient with a per-layer rescaling and a clip, not a different
      quantizer: the forward is unchanged.
    """

    @staticmethod
    def forward(
        ctx, w: Tensor, wp: Tensor, wn: Tensor, delta: Tensor, normalized: bool = False, bound: Tensor | None = None
    ) -> Tensor:
        pos = w > delta
        neg = w < -delta
        inside = w.abs() <= bound if normalized and bound is not None else None
        ctx.save_for_backward(pos, neg, wp, wn, inside)
        ctx.normalized = normalized
        zero = torch.zeros((), dtype=w.dtype, device=w.device)
        return torch.where(pos, wp.to(w.dtype), torch.where(neg, -wn.to(w.dtype), zero))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None, None]:
        pos, neg, wp, wn, inside = ctx.saved_tensors
        fp, fn = wp.to(grad.dtype), wn.to(grad.dtype)
        grad_wp = (grad * pos).sum()
        grad_wn = -(grad * neg).sum()
        if ctx.normalized:
            s = (fp + fn) / 2
            fp, fn = fp / s, fn / s
            grad_wp = grad_wp / pos.sum().clamp_min(1)
            grad_wn = grad_wn / neg.sum().clamp_min(1)
        grad_w = torch.where(pos, fp * grad, torch.where(neg, fn * grad, grad))
        if inside is not None:
            grad_w = grad_w * inside.to(grad_w.dtype)
        return grad_w, grad_wp.reshape(wp.shape).to(wp.dtype), grad_wn.reshape(wn.shape).to(wn.dtype), None, None, None


class RoundSTE(torch.autograd.Function):
    """Rounding with the identity STE (DoReFa's quantize_k building block).

    forward:  round(x)     (torch.round: halves to even)
    backward: dL/dx = dL/dround(x)
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


# --------------------------------------------------------------------------- binary-connect


def binary_connect_weight(
    w: Tensor, stochastic: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """BinaryConnect weights in {-1, +1}.

    deterministic: w_b = sgn(w)
    stochastic:    w_b = +1 with p = sigma(w) = clip((w + 1) / 2, 0, 1), else -1
    Gradient: identity STE. Layers scale it: Wq = H * binary_connect_weight(W / H), H from
    `binary_connect_scale`. Latent weights should be kept in [-1, 1] with `clip_latent_`
    after each optimizer step; the forward value does not depend on it (sgn and sigma
    are unchanged by clipping), so a missed clip only affects optimization dynamics.
    """
    if stochastic:
        return StochasticSignSTE.apply(w, generator)
    return SignSTE.apply(w)


@torch.no_grad()
def binary_connect_scale(w: Tensor, rule: str = "rms", groups: int = 1) -> float:
    """The fixed magnitude H of BinaryConnect weights (Wq = H * w_b), from a weight tensor.

    rms:    H = sqrt(mean(W^2)), the layer's own scale, so +-H keeps its fp gain
    glorot: H = sqrt(1.5 / (fan_in + fan_out)), the BinaryConnect authors' default;
            fan_in = W.shape[1] * k_h * k_w, fan_out = W.shape[0] / groups * k_h * k_w
    Falls back to glorot when W is all zeros.
    """
    if rule == "rms":
        rms = float(w.float().pow(2).mean().sqrt())
        if rms > 0:
            return rms
        rule = "glorot"
    if rule != "glorot":
        raise ValueError(f"unknown BinaryConnect scale rule {rule!r} (rms, glorot)")
    receptive = w[0][0].numel()
    fan_in = w.shape[1] * receptive
    fan_out = w.shape[0] // groups * receptive
    return (1.5 / (fan_in + fan_out)) ** 0.5


@torch.no_grad()
def clip_latent_(w: Tensor, bound: float = 1.0) -> Tensor:
    """In place: w <- clip(w, -bound, bound). The BinaryConnect post-step hook."""
    return w.clamp_(-bound, bound)


# --------------------------------------------------------------------------- xnor


def xnor_alpha(w: Tensor) -> Tensor:
    """alpha_o = mean |W_o| over each output filter; shape (out, 1, ...) broadcastable to w."""
    return w.abs().mean(dim=_filter_dims(w), keepdim=True)


def xnor_weight(w: Tensor) -> Tensor:
    """Wq = alpha_o * sgn(W), per output filter (see `XnorWeightSTE` for the gradient)."""
    return XnorWeightSTE.apply(w)


def binary_activation(x: Tensor) -> Tensor:
    """XNOR-Net BinActiv: sgn(x) with the hard-tanh STE (grad passes where |x| <= 1).

    XNOR-Net's block is BN -> BinActiv -> BinConv -> Pool; the layers apply this to
    their own input, so it sits right before the binary conv. The paper's activation
    scale K is `xnor_input_scale` (applied by the layers, option act_scale).
    """
    return SignHardTanhSTE.apply(x)


def xnor_input_scale(
    x: Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int] | int = 1,
    dilation: tuple[int, int] | int = 1,
    groups: int = 1,
) -> Tensor:
    """XNOR-Net's activation scale K for a conv over an already padded input x (N, C, H, W).

    K[n, g, i, j] = mean |x| over the receptive field of output (i, j) in group g
                  = 1 / (C/g * kh * kw) * sum_{c in g, u, v} |x[n, c, i*s_h + u*d_h, j*s_w + v*d_w]|
    i.e. the mean |x| of one im2col row. Shape (N, groups, Ho, Wo); differentiable.
    """
    c = x.shape[1]
    kh, kw = kernel_size
    box = torch.full(
        (groups, c // groups, kh, kw), 1.0 / (c // groups * kh * kw), dtype=x.dtype, device=x.device
    )
    return torch.nn.functional.conv2d(x.abs(), box, None, stride, 0, dilation, groups)


# --------------------------------------------------------------------------- ternary (TWN, TTQ)


def ternary_codes(w: Tensor, delta: Tensor | float) -> Tensor:
    """codes_i = +1 if W_i > delta, -1 if W_i < -delta, else 0 (int8)."""
    return (w > delta).to(torch.int8) - (w < -delta).to(torch.int8)


def twn_threshold(w: Tensor, factor: float = 0.7) -> Tensor:
    """delta = factor * mean |W| over the whole layer (TWN's approximation, factor 0.7)."""
    return factor * w.detach().abs().mean()


def twn_alpha(w: Tensor, delta: Tensor | float) -> Tensor:
    """alpha = mean of |W_i| over {i : |W_i| > delta} (0 if that set is empty)."""
    a = w.detach().abs()
    mask = a > delta
    return (a * mask).sum() / mask.sum().clamp_min(1)


def twn_weight(w: Tensor, factor: float = 0.7) -> Tensor:
    """TWN: Wq = alpha * sgn(W) * 1{|W| > delta}, delta = factor * mean|W|, alpha = mean_{|W|>delta} |W|.

    Values {-alpha, 0, +alpha}, one alpha per layer; identity STE (`TernarySTE`).
    """
    delta = twn_threshold(w, factor)
    return TernarySTE.apply(w, delta, twn_alpha(w, delta))


def ttq_threshold(w: Tensor, t: float = 0.05) -> Tensor:
    """delta = t * max |W| (TTQ, t = 0.05); not differentiated."""
    return t * w.detach().abs().max()


@torch.no_grad()
def ttq_init_scales(w: Tensor, t: float = 0.05) -> tuple[Tensor, Tensor]:
    """Starting values for (Wp, Wn): mean |W| over {W > delta} and over {W < -delta}.

    Falls back to mean |W| (or 1.0 for an all-zero tensor) when a side is empty.
    """
    delta = ttq_threshold(w, t)
    a = w.abs()
    fallback = a.mean() if bool(a.sum() > 0) else torch.ones((), dtype=w.dtype, device=w.device)

    def side(mask: Tensor) -> Tensor:
        return (a * mask).sum() / mask.sum() if bool(mask.any()) else fallback

    return side(w > delta).reshape(1), side(w < -delta).reshape(1)


TTQ_GRADS = ("normalized", "paper")


def ttq_weight(
    w: Tensor, wp: Tensor, wn: Tensor, t: float = 0.05, grads: str = "normalized", bound: Tensor | float | None = None
) -> Tensor:
    """TTQ: Wq in {-Wn, 0, +Wp} with threshold delta = t * max|W|.

    grads: "normalized" (default) or "paper", the backward rule (see `TTQWeightSTE`).
    bound: with "normalized", the latent gradient passes only where |W| <= bound (None: everywhere).
    Wp, Wn must be > 0; the layers keep them positive by learning log Wp, log Wn.
    """
    if grads not in TTQ_GRADS:
        raise ValueError(f"ttq grads must be one of {TTQ_GRADS}, got {grads!r}")
    if bound is not None and not isinstance(bound, Tensor):
        bound = torch.tensor(float(bound), dtype=w.dtype, device=w.device)
    return TTQWeightSTE.apply(w, wp, wn, ttq_threshold(w, t), grads == "normalized", bound)


# --------------------------------------------------------------------------- DoReFa


def _check_bits(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 2 <= k <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {k!r}")


def quantize_k(x: Tensor, k: int) -> Tensor:
    """quantize_k(x) = round((2^k - 1) x) / (2^k - 1) for x in [0, 1]; identity STE through round."""
    n = 2**k - 1
    return RoundSTE.apply(x * n) / n


def _dorefa_unit(w: Tensor) -> Tensor:
    """r = tanh(W) / (2 max|tanh(W)|) + 1/2, in [0, 1]."""
    t = torch.tanh(w)
    return t / (2 * t.abs().max().clamp_min(torch.finfo(t.dtype).tiny)) + 0.5


def dorefa_weight(w: Tensor, k: int) -> Tensor:
    """DoReFa k-bit weights: Wq = 2 * quantize_k(tanh(W) / (2 max|tanh(W)|) + 1/2) - 1.

    Values are the 2^k levels {2i / (2^k - 1) - 1 : i = 0..2^k-1} in [-1, 1]. The gradient is
    the exact derivative of the tanh normalization (max included) with the identity STE
    through round, i.e. the gradient of 2r - 1 = tanh(W) / max|tanh(W)|.
    """
    _check_bits(k)
    return 2 * quantize_k(_dorefa_unit(w), k) - 1


@torch.no_grad()
def dorefa_weight_codes(w: Tensor, k: int) -> Tensor:
    """Integer codes i in 0..2^k-1 (uint8) with Wq = 2 i / (2^k - 1) - 1."""
    _check_bits(k)
    return torch.round(_dorefa_unit(w) * (2**k - 1)).to(torch.uint8)


def dorefa_activation(x: Tensor, k: int) -> Tensor:
    """DoReFa k-bit activations: xq = quantize_k(clip(x, 0, 1)); grad passes where 0 <= x <= 1."""
    _check_bits(k)
    return quantize_k(x.clamp(0, 1), k)


# --------------------------------------------------------------------------- int8


def int8_weight(w: Tensor) -> Tensor:
    """Reference per-output-channel symmetric int8 fake quantization of a weight.

    scale_o = max(-min(W_o, 0) / 128, max(W_o, 0) / 127), zero point 0 (the rule of torch's
    fused moving-average fake-quant for qint8 per-channel symmetric, which the int8 layers use),
    Wq = clip(round(W / scale_o), -128, 127) * scale_o; gradient passes inside the range.
    """
    dims = _filter_dims(w)
    lo = w.detach().amin(dim=dims).float().clamp_max(0)
    hi = w.detach().amax(dim=dims).float().clamp_min(0)
    scale = torch.maximum(-lo / 128, hi / 127).clamp_min(torch.finfo(torch.float32).eps)
    zero_point = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, -128, 127)


def int8_fake_quant_factories(backend: str = "x86") -> tuple[Callable[[], torch.nn.Module], ...]:
    """(activation, weight) constructors of torch.ao fake-quant modules for int8 QAT.

    activation: quint8 per-tensor affine, moving-average min/max; range 0..127 on x86/fbgemm
                (their kernels want the reduced range), 0..255 elsewhere.
    weight:     qint8 per-output-channel symmetric, moving-average min/max, range -128..127.
    These are torch.ao's default QAT settings, spelled out to avoid its deprecated reduce_range.
    """
    act_max = 127 if backend in ("x86", "fbgemm") else 255
    activation = partial(
        FusedMovingAvgObsFakeQuantize,
        observer=MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=act_max,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )
    weight = partial(
        FusedMovingAvgObsFakeQuantize,
        observer=MovingAveragePerChannelMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )
    return activation, weight
