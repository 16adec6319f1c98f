"""Low-precision Conv2d / Linear layers for quantization-aware training.

`QConv2d` and `QLinear` subclass nn.Conv2d / nn.Linear: same constructor arguments,
same `weight` / `bias` parameters and state-dict keys, plus the scheme's extra state.
In forward they quantize their input (schemes with an activation quantizer) and
their latent weight with the STEs of `kernels.ste`, then run the ordinary op.

What export code reads (all layers):
  scheme          str, one of SCHEMES
  options         dict of the scheme's resolved options
  weight          nn.Parameter, the latent full-precision weight (what the optimizer updates)
  bias            fp bias or None (never quantized)
  weight_bits     bits per weight: 1 (binary), 2 (ternary), k (dorefa), 8 (int8)
  act_bits        bits of the input quantizer: 1 (xnor), k (dorefa), 8 (int8), None = fp input
  quantized_weight()  the weight the eval-mode forward uses (detached)
  export_state()      dict with integer codes and the scales that rebuild quantized_weight()

Per scheme (scales are detached tensors, computed from the latent weight now):
  binary-connect  codes in {-1,+1} (int8), alpha = H (scalar, fixed);  Wq = alpha * codes
                  H is the buffer `binary_scale`, fixed when the layer is made: option
                  scale="rms" (default) the RMS of the weight it starts from, so the layer
                  keeps its fp gain (matters in nets without BN, e.g. SqueezeNet);
                  "glorot" sqrt(1.5 / (fan_in + fan_out)) as in the authors' code;
                  or a float (1.0: plain +-1).
                  Latent weights live in [-H, H] (clip_latent_); stochastic=True samples
                  +1 with p = sigma(W / H) in training, the eval forward uses sgn
  xnor            codes in {-1,+1}, alpha shape (out,) per filter;   Wq = alpha[o] * codes
                  input binarized to sgn(x) in {-1,+1} (bit = x > 0) unless binarize_input=False;
                  the input is padded *before* binarizing (padded positions are -1), and with
                  act_scale=True (default) the output is multiplied by K = mean |x| over each
                  receptive field (XNOR-Net's K; per group, padded zeros counted), then + bias
  twn             codes in {-1,0,+1}, alpha (scalar), threshold delta = threshold_factor * mean|W| (0.7)
                  Wq = alpha * codes
  ttq             codes in {-1,0,+1}, learned scales wp, wn (shape (1,), > 0 by construction: the
                  parameters are log_wp, log_wn and wp = exp(log_wp); a state dict with the old
                  wp / wn keys still loads), threshold delta = threshold_factor * max|W| (0.05);
                  Wq = wp if code>0, -wn if code<0.
                  Options: grads="normalized" (default) or "paper", the backward rule
                  (kernels.ste.TTQWeightSTE: the paper's rule as printed collapses nets trained
                  from scratch with plain SGD); scale_lr=1.0, the learning-rate multiplier of the
                  scales' optimizer group (see quantizer_parameters below).
                  Buffer latent_bound: max |W| at the layer's first training forward (0 until
                  then); with grads="normalized" the latent weight gets gradient only inside
                  [-latent_bound, latent_bound] (hard-tanh STE), so a few drifting weights cannot
                  raise delta = t * max|W| until the layer is all zeros.
  dorefa          codes in 0..2^k-1 (uint8), k = weight_bits;        Wq = 2 * codes / (2^k-1) - 1
                  input: clip(x, 0, 1) quantized to act_bits levels (none if act_bits is None)
  int8            torch.ao fake-quant submodules input_fake_quant, weight_fake_quant,
                  output_fake_quant (their .scale / .zero_point buffers); see
                  students.quantize.convert_int8 for the real int8 model.

What optimizers read (all layers):
  quantizer_parameters()  the learned quantizer state (TTQ: log_wp, log_wn; others: none). It
                  belongs in its own parameter group, without weight decay (decay would pull
                  log-scales to 1) and with lr x quantizer_lr_scale;
                  students.quantize.quantizer_param_groups builds those groups for a model.
  quantizer_lr_scale  that multiplier (the ttq option scale_lr; 1.0 for the other schemes)

Sign convention: sgn(x) = +1 if x > 0 else -1 (see kernels.ste).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels import ste

SCHEMES: tuple[str, ...] = ("binary-connect", "xnor", "twn", "ttq", "dorefa", "int8")

# scheme -> {option: default}. `act_bits=None` for dorefa means "same as bits".
SCHEME_OPTIONS: dict[str, dict[str, Any]] = {
    "binary-connect": {"stochastic": False, "scale": "rms"},
    "xnor": {"binarize_input": True, "act_scale": True},
    "twn": {"threshold_factor": 0.7},
    "ttq": {"threshold_factor": 0.05, "grads": "normalized", "scale_lr": 1.0},
    "dorefa": {"bits": 4, "act_bits": None},
    "int8": {"backend": "x86"},
}


def resolve_options(scheme: str, options: dict[str, Any]) -> dict[str, Any]:
    """Defaults merged with `options`, validated. Raises ValueError naming the bad scheme or option."""
    if scheme not in SCHEME_OPTIONS:
        raise ValueError(f"unknown quantization scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    allowed = SCHEME_OPTIONS[scheme]
    for name in options:
        if name not in allowed:
            accepts = ", ".join(allowed) or "none"
            raise ValueError(f"unknown option {name!r} for scheme {scheme!r} (accepts: {accepts})")
    out = {**allowed, **options}
    if scheme == "binary-connect":
        scale = out["scale"]
        if scale not in ("rms", "glorot") and not _is_number_in(scale, 0, float("inf")):
            raise ValueError(f"option 'scale' must be 'rms', 'glorot' or a positive number, got {scale!r}")
    for name in ("stochastic", "binarize_input", "act_scale"):
        if name in out and not isinstance(out[name], bool):
            raise ValueError(f"option {name!r} must be a bool, got {out[name]!r}")
    if scheme in ("twn", "ttq"):
        factor, hi = out["threshold_factor"], (1 if scheme == "ttq" else 10)
        if not _is_number_in(factor, 0, hi):
            raise ValueError(f"option 'threshold_factor' must be a number in (0, {hi}), got {factor!r}")
    if scheme == "ttq":
        if out["grads"] not in ste.TTQ_GRADS:
            raise ValueError(f"option 'grads' must be one of {list(ste.TTQ_GRADS)}, got {out['grads']!r}")
        if not (out["scale_lr"] == 0 or _is_number_in(out["scale_lr"], 0, float("inf"))):
            raise ValueError(f"option 'scale_lr' must be a number >= 0, got {out['scale_lr']!r}")
    if scheme == "dorefa":
        if out["act_bits"] is None:
            out["act_bits"] = out["bits"]
        for name in ("bits", "act_bits"):
            k = out[name]
            full = name == "act_bits" and k == 32
            if not (isinstance(k, int) and not isinstance(k, bool) and (2 <= k <= 8 or full)):
                extra = " (or 32 for full-precision activations)" if name == "act_bits" else ""
                raise ValueError(f"option {name!r} must be an int in 2..8{extra}, got {k!r}")
    if scheme == "int8":
        engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
        if out["backend"] not in engines:
            raise ValueError(f"option 'backend' must be one of {engines}, got {out['backend']!r}")
    return out


def quantize_weight_int8(w: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """A per-output-channel qint8 tensor of `w` (torch.ao quantized tensors, what nnq layers take).

    torch 2.13 marks quantized-tensor creation as deprecated (pytorch/pytorch#184982) but its
    eager int8 kernels still need them; the warning is silenced here, once, on purpose.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        return torch.quantize_per_channel(w.detach().float(), scale, zero_point.long(), 0, torch.qint8)


def _is_number_in(x: Any, lo: float, hi: float) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and lo < x < hi


class _QuantMixin:
    """The scheme logic shared by QConv2d and QLinear.

    The host class supplies `_op(x, w, bias, padded)` (its op, with the padding already applied
    when `padded`), `_pad(x)` and `_input_scale(x)` (the XNOR-Net activation scale K).
    """

    weight: nn.Parameter
    scheme: str
    options: dict[str, Any]

    def _setup_quant(self, scheme: str, options: dict[str, Any]) -> None:
        self.scheme = scheme
        self.options = resolve_options(scheme, options)
        if scheme == "binary-connect":
            w = self.weight
            self.register_buffer("binary_scale", torch.ones((), dtype=w.dtype, device=w.device))
            self._init_binary_scale()
        if scheme == "ttq":
            # Learned in log space: Wp, Wn > 0 by construction (a negative Wn turns the layer's
            # "negative" weights positive), and an optimizer step changes them by a ratio,
            # whatever their size (BN makes the function depend on Wp : Wn only).
            wp, wn = ste.ttq_init_scales(self.weight.detach(), self.options["threshold_factor"])
            self.log_wp = nn.Parameter(wp.log())
            self.log_wn = nn.Parameter(wn.log())
            w = self.weight
            self.register_buffer("latent_bound", torch.zeros((), dtype=w.dtype, device=w.device))
            self._bound_checked = False
        if scheme == "int8":
            act_fq, weight_fq = ste.int8_fake_quant_factories(self.options["backend"])
            device = self.weight.device
            self.input_fake_quant = act_fq().to(device)
            self.weight_fake_quant = weight_fq().to(device)
            self.output_fake_quant = act_fq().to(device)
            self._set_observers(self.training)

    # ---------------------------------------------------------------- what export reads

    @property
    def weight_bits(self) -> int:
        return {"binary-connect": 1, "xnor": 1, "twn": 2, "ttq": 2, "int8": 8}.get(
            self.scheme, self.options.get("bits", 0)
        )

    @property
    def act_bits(self) -> int | None:
        if self.scheme == "xnor":
            return 1 if self.options["binarize_input"] else None
        if self.scheme == "dorefa":
            return None if self.options["act_bits"] == 32 else self.options["act_bits"]
        return 8 if self.scheme == "int8" else None

    @property
    def wp(self) -> Tensor:
        """TTQ's positive scale Wp = exp(log_wp), differentiable (the forward uses it)."""
        return self.log_wp.exp()

    @property
    def wn(self) -> Tensor:
        """TTQ's negative-side scale Wn = exp(log_wn) > 0 (the weight value is -Wn)."""
        return self.log_wn.exp()

    @torch.no_grad()
    def set_ttq_scales_(self, wp: float | Tensor, wn: float | Tensor) -> None:
        """Set TTQ's Wp, Wn (> 0) in place, e.g. after copying a latent weight."""
        for param, value in ((self.log_wp, wp), (self.log_wn, wn)):
            value = torch.as_tensor(value, dtype=torch.float32)
            if not bool((value > 0).all()):
                raise ValueError(f"TTQ scales must be > 0, got {value.tolist()}")
            param.copy_(value.log().reshape(param.shape))

    def quantizer_parameters(self) -> list[nn.Parameter]:
        """The learned quantizer state the optimizer should group apart (TTQ: log_wp, log_wn)."""
        return [self.log_wp, self.log_wn] if self.scheme == "ttq" else []

    @property
    def quantizer_lr_scale(self) -> float:
        """Learning-rate multiplier for `quantizer_parameters()` (the ttq option scale_lr)."""
        return float(self.options.get("scale_lr", 1.0)) if self.scheme == "ttq" else 1.0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Accept TTQ state dicts from before the log parametrization (keys wp / wn, no
        latent_bound: the next training forward sets it from the loaded weight)."""
        if getattr(self, "scheme", None) == "ttq":
            for side in ("wp", "wn"):
                old, new = prefix + side, prefix + "log_" + side
                if old in state_dict and new not in state_dict:
                    value = state_dict.pop(old)
                    state_dict[new] = value.clamp_min(torch.finfo(value.dtype).tiny).log()
            if prefix + "latent_bound" not in state_dict:  # unset: fixed by the next training forward
                state_dict[prefix + "latent_bound"] = torch.zeros_like(self.latent_bound)
            self._bound_checked = False
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]

    @property
    def threshold(self) -> Tensor:
        """Ternary threshold delta: twn threshold_factor * mean|W|, ttq threshold_factor * max|W|."""
        if self.scheme == "twn":
            return ste.twn_threshold(self.weight, self.options["threshold_factor"])
        if self.scheme == "ttq":
            return ste.ttq_threshold(self.weight, self.options["threshold_factor"])
        raise AttributeError(f"scheme {self.scheme!r} has no threshold")

    @property
    def alpha(self) -> Tensor:
        """Binary/ternary scale: H (binary-connect), (out,) per filter (xnor), scalar (twn)."""
        w = self.weight.detach()
        if self.scheme == "binary-connect":
            return self.binary_scale.detach().clone()
        if self.scheme == "xnor":
            return ste.xnor_alpha(w).flatten()
        if self.scheme == "twn":
            return ste.twn_alpha(w, self.threshold)
        raise AttributeError(f"scheme {self.scheme!r} has no alpha (ttq: wp / wn)")

    @torch.no_grad()
    def quantized_weight(self) -> Tensor:
        """The weight the eval-mode forward multiplies with (binary-connect: deterministic sgn)."""
        return self._weight_q(deterministic=True).detach()

    @torch.no_grad()
    def export_state(self) -> dict[str, Any]:
        """Integer codes plus scales; see the module docstring for how they rebuild the weight."""
        w = self.weight.detach()
        state: dict[str, Any] = {
            "scheme": self.scheme,
            "weight_bits": self.weight_bits,
            "act_bits": self.act_bits,
        }
        if self.scheme in ("binary-connect", "xnor"):
            state.update(codes=ste.sgn(w).to(torch.int8), alpha=self.alpha)
        elif self.scheme == "twn":
            state.update(
                codes=ste.ternary_codes(w, self.threshold), alpha=self.alpha, threshold=self.threshold
            )
        elif self.scheme == "ttq":
            state.update(
                codes=ste.ternary_codes(w, self.threshold),
                wp=self.wp.detach().clone(),
                wn=self.wn.detach().clone(),
                threshold=self.threshold,
            )
        elif self.scheme == "dorefa":
            state.update(codes=ste.dorefa_weight_codes(w, self.options["bits"]))
        else:  # int8
            wfq = self.weight_fake_quant
            qw = quantize_weight_int8(w, wfq.scale, wfq.zero_point)
            state.update(
                codes=qw.int_repr(),
                scale=wfq.scale.clone(),
                zero_point=wfq.zero_point.clone(),
                input_scale=self.input_fake_quant.scale.clone(),
                input_zero_point=self.input_fake_quant.zero_point.clone(),
                output_scale=self.output_fake_quant.scale.clone(),
                output_zero_point=self.output_fake_quant.zero_point.clone(),
            )
        return state

    # ---------------------------------------------------------------- training

    def clip_latent_(self) -> None:
        """BinaryConnect: clip the latent weight to [-H, H]; call after each optimizer step.

        A no-op for other schemes. Under DeepSpeed with fp32 master weights the clip of the
        module copy does not reach the master copy; the forward is correct either way.
        """
        if self.scheme == "binary-connect":
            ste.clip_latent_(self.weight.data, float(self.binary_scale))

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)  # type: ignore[misc]
        if self.scheme == "int8":
            self._set_observers(mode)
        return self

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        """.to(dtype) / .half() / .bfloat16() reach here: keep the int8 fake-quant state in fp32,
        which is the only dtype torch.ao's fused fake-quant accepts."""
        super()._apply(fn, recurse)  # type: ignore[misc]
        if getattr(self, "scheme", None) == "int8":
            for fq in (self.input_fake_quant, self.weight_fake_quant, self.output_fake_quant):
                fq.float()
        return self

    def _set_observers(self, enabled: bool) -> None:
        """int8 observers learn ranges in training mode only; eval uses the frozen scales."""
        for fq in (self.input_fake_quant, self.weight_fake_quant, self.output_fake_quant):
            if enabled:
                fq.enable_observer()
            else:
                fq.disable_observer()

    # ---------------------------------------------------------------- forward

    def _weight_q(self, deterministic: bool = False) -> Tensor:
        w, o, s = self.weight, self.options, self.scheme
        if s == "binary-connect":
            # In units of H the paper's rules hold as printed: sgn, sigma(w / H), clip to [-1, 1].
            # The gradient w.r.t. W is still the identity (H * g / H).
            h = self.binary_scale
            stochastic = o["stochastic"] and self.training and not deterministic
            return h * ste.binary_connect_weight(w / h, stochastic=stochastic)
        if s == "xnor":
            return ste.xnor_weight(w)
        if s == "twn":
            return ste.twn_weight(w, o["threshold_factor"])
        if s == "ttq":
            bound = self._ttq_latent_bound() if self.training and torch.is_grad_enabled() else None
            return ste.ttq_weight(w, self.wp, self.wn, o["threshold_factor"], o["grads"], bound)
        if s == "dorefa":
            return ste.dorefa_weight(w, o["bits"])
        fq, w = self.weight_fake_quant, w.float()  # torch.ao fake-quant runs in fp32 only
        if deterministic:  # the frozen scales, without feeding the observer
            return torch.fake_quantize_per_channel_affine(
                w, fq.scale, fq.zero_point, fq.ch_axis, fq.quant_min, fq.quant_max
            )
        return fq(w)

    def _ttq_latent_bound(self) -> Tensor:
        """latent_bound, fixed to max |W| by the first training forward (0 means not yet).

        Not at construction: DDP and DeepSpeed make the ranks' weights equal by broadcasting
        parameters, not buffers, after every rank built (and randomly initialized) its own
        model; a bound taken from each rank's own init would differ between ranks, and a
        resumed run (every rank loading rank 0's buffers) would not continue the same run.
        A checkpoint restores the bound once set."""
        if not self._bound_checked:
            with torch.no_grad():
                if not bool(self.latent_bound > 0):
                    self.latent_bound.copy_(self.weight.detach().abs().max())
            self._bound_checked = True
        return self.latent_bound

    @torch.no_grad()
    def _init_binary_scale(self) -> None:
        """Fix BinaryConnect's H from the current weight (called again after from_float copies)."""
        rule = self.options["scale"]
        groups = getattr(self, "groups", 1)
        h = float(rule) if not isinstance(rule, str) else ste.binary_connect_scale(self.weight, rule, groups)
        self.binary_scale.fill_(h)

    def _input_q(self, x: Tensor) -> Tensor:
        s = self.scheme
        if s == "dorefa" and self.options["act_bits"] != 32:
            return ste.dorefa_activation(x, self.options["act_bits"])
        return x

    def forward(self, x: Tensor) -> Tensor:
        if self.scheme == "xnor" and self.options["binarize_input"]:
            return self._xnor_forward(x)
        if self.scheme == "int8":
            return self._int8_forward(x)
        return self._op(self._input_q(x), self._weight_q(), self.bias)  # type: ignore[attr-defined]

    def _int8_forward(self, x: Tensor) -> Tensor:
        """fq_out(op(fq_in(x), fq_w(W)) + b), in fp32 (torch.ao's fake-quant ops take nothing else),
        so it also runs inside bf16 autocast or a bf16 model; the result comes back in x's dtype."""
        bias = self.bias  # type: ignore[attr-defined]
        with torch.autocast(x.device.type, enabled=False):
            xq = self.input_fake_quant(x.float())
            out = self._op(xq, self._weight_q(), None if bias is None else bias.float())  # type: ignore[attr-defined]
            out = self.output_fake_quant(out)
        return out.to(x.dtype)

    def _xnor_forward(self, x: Tensor) -> Tensor:
        """y = K * (sgn(x) (*) alpha sgn(W)) + b, every input of the binary op in {-1, +1}.

        The input is padded before it is binarized, so padded positions enter as sgn(0) = -1,
        as in a packed kernel that binarizes im2col rows of the zero-padded input. K (option
        act_scale) is the mean |x| over each receptive field, padded zeros included.
        """
        x = self._pad(x)  # type: ignore[attr-defined]
        out = self._op(ste.binary_activation(x), self._weight_q(), None, padded=True)  # type: ignore[attr-defined]
        if self.options["act_scale"]:
            out = out * self._input_scale(x)  # type: ignore[attr-defined]
        bias = self.bias  # type: ignore[attr-defined]
        if bias is not None:
            out = out + (bias.view(-1, 1, 1) if isinstance(self, nn.Conv2d) else bias)
        return out

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{super().extra_repr()}, scheme={self.scheme}" + (f", {opts}" if opts else "")  # type: ignore[misc]


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
        scheme: str,
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

    def _op(self, x: Tensor, w: Tensor, bias: Tensor | None, padded: bool = False) -> Tensor:
        if padded:
            return F.conv2d(x, w, bias, self.stride, 0, self.dilation, self.groups)
        return self._conv_forward(x, w, bias)

    def _pad(self, x: Tensor) -> Tensor:
        pads = self._reversed_padding_repeated_twice
        if not any(pads):
            return x
        return F.pad(x, pads, mode="constant" if self.padding_mode == "zeros" else self.padding_mode)

    def _input_scale(self, x: Tensor) -> Tensor:
        """K of shape (N, out_channels or 1, Ho, Wo): one value per group and output position."""
        k = ste.xnor_input_scale(x, self.kernel_size, self.stride, self.dilation, self.groups)
        return k.repeat_interleave(self.out_channels // self.groups, dim=1) if self.groups > 1 else k

    @classmethod
    def from_float(cls, conv: nn.Conv2d, scheme: str, **options: Any) -> QConv2d:
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
        scheme: str,
        **options: Any,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._setup_quant(scheme, options)

    def _op(self, x: Tensor, w: Tensor, bias: Tensor | None, padded: bool = False) -> Tensor:
        return F.linear(x, w, bias)

    def _pad(self, x: Tensor) -> Tensor:
        return x

    def _input_scale(self, x: Tensor) -> Tensor:
        """K = mean |x| over the input features, shape (..., 1)."""
        return x.abs().mean(dim=-1, keepdim=True)

    @classmethod
    def from_float(cls, linear: nn.Linear, scheme: str, **options: Any) -> QLinear:
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
        if q.scheme == "binary-connect":  # H and the TTQ scales start from the copied weight
            q._init_binary_scale()
        if q.scheme == "ttq":
            q.set_ttq_scales_(*ste.ttq_init_scales(q.weight, q.options["threshold_factor"]))
    return q.train(src.training)
