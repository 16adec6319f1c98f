"""One-call model transforms for low-precision students (torchao `quantize_` style).

    qmodel = quantize(model, "ttq")                  # train qmodel as usual
    qmodel = quantize(model, "dorefa", bits=2)
    qmodel = quantize(model, "int8"); ...QAT...; int8_model = convert_int8(qmodel)

`quantize` swaps every nn.Conv2d / nn.Linear (exact types; subclasses with their own
forward are left alone) for `QConv2d` / `QLinear`, copying weights. The first and the
last of those layers in module order (the stem conv and the classifier, which is a
1x1 conv in SqueezeNet) stay in full precision by default, as in the papers. For ttq the
depthwise convs (groups == in_channels) stay in full precision too unless skip_depthwise=False:
see `DEPTHWISE_FP_SCHEMES`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
import torch.ao.nn.quantized as nnq
from torch import nn

from students.qlayers import SCHEME_OPTIONS, SCHEMES, QConv2d, QLinear, quantize_weight_int8, resolve_options

__all__ = [
    "SCHEMES",
    "SCHEME_OPTIONS",
    "DEPTHWISE_FP_SCHEMES",
    "quantize",
    "quantized_layers",
    "quantizer_param_groups",
    "clip_latent_",
    "convert_int8",
]


# Schemes whose depthwise convs stay fp32 unless quantize(..., skip_depthwise=False).
# Measured for TTQ (normalized grads, log-scales, latent bound), MobileNet v1 alpha 0.25 on digits,
# distilled (0.3 CE + 0.7 KD, T 4) from the demo teachers, SGD lr 0.1 cosine, batch 64, val top-1
# minus the fp student's: ternary depthwise convs -5.7 / -4.0 / -4.6 points at 10 epochs (3 seeds),
# -3.3 at 15, -4.7 at 20, with dips of 10-50 points mid-training; fp depthwise convs +1.0 / -0.6 /
# -1.0 at 15 epochs. A depthwise filter is 9 taps that BN rescales per channel, and one threshold
# and scale pair per layer zeroes whole channels (the last ones run on 1x1 maps where only the
# centre tap matters: 95% zeros). They hold ~5% of the weights at alpha 0.25, ~1% at alpha 1
# (~3% of the MACs, MobileNet paper Table 2); the packed kernels take fp32 depthwise layers.
DEPTHWISE_FP_SCHEMES = frozenset({"ttq"})


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def quantize(
    model: nn.Module,
    scheme: str,
    *,
    keep_first: bool = True,
    keep_last: bool = True,
    skip_depthwise: bool | None = None,
    exclude: Iterable[str] = (),
    inplace: bool = False,
    **options: Any,
) -> nn.Module:
    """Return `model` with its Conv2d / Linear layers replaced by `scheme`'s low-precision layers.

    scheme          one of SCHEMES: binary-connect, xnor, twn, ttq, dorefa, int8
    keep_first      keep the first Conv2d/Linear (module order) in full precision
    keep_last       keep the last Conv2d/Linear (the classifier) in full precision
    skip_depthwise  keep depthwise convs (groups == in_channels) in full precision;
                    None (default): True for the schemes in DEPTHWISE_FP_SCHEMES (ttq), else False
    exclude         qualified module names to keep in full precision
    inplace         modify `model` itself instead of a deep copy
    options         the scheme's options (students.qlayers.SCHEME_OPTIONS):
                    binary-connect: stochastic=False, scale="rms"; xnor: binarize_input=True;
                    twn: threshold_factor=0.7;
                    ttq: threshold_factor=0.05, grads="normalized", scale_lr=1.0;
                    dorefa: bits=4, act_bits=bits (32 = fp activations); int8: backend="x86"

    Raises ValueError naming an unknown scheme, option or excluded name, or a model that is
    already quantized.
    """
    options = resolve_options(scheme, options)
    if skip_depthwise is None:
        skip_depthwise = scheme in DEPTHWISE_FP_SCHEMES
    exclude = set(exclude)
    all_names = {name for name, _ in model.named_modules()}
    missing = sorted(exclude - all_names)
    if missing:
        raise ValueError(f"exclude: model has no module named {missing[0]!r}")
    for name, m in model.named_modules():
        if isinstance(m, QConv2d | QLinear):
            raise ValueError(f"model is already quantized: {name!r} uses scheme {m.scheme!r}")

    if not inplace:
        model = copy.deepcopy(model)
    candidates = [(n, m) for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    keep = set(exclude)
    if candidates and keep_first:
        keep.add(candidates[0][0])
    if candidates and keep_last:
        keep.add(candidates[-1][0])
    if skip_depthwise:
        keep.update(n for n, m in candidates if _is_depthwise(m))

    replaced: dict[int, nn.Module] = {}  # id(old) -> new, so a module shared under two names stays shared
    for name, m in candidates:
        if name not in keep:
            cls = QConv2d if isinstance(m, nn.Conv2d) else QLinear
            replaced[id(m)] = cls.from_float(m, scheme, **options)
    _swap(model, replaced)
    return model


def _swap(model: nn.Module, replaced: dict[int, nn.Module]) -> None:
    # _modules, not named_children(): the latter skips a module's second registration.
    for parent in list(model.modules()):
        for attr, child in list(parent._modules.items()):
            if child is not None and id(child) in replaced:
                setattr(parent, attr, replaced[id(child)])


def quantized_layers(model: nn.Module) -> list[tuple[str, QConv2d | QLinear]]:
    """(qualified name, layer) for every low-precision layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QConv2d | QLinear)]


def quantizer_param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Optimizer groups for the learned quantizer state of `model`'s low-precision layers.

    One dict per distinct learning-rate multiplier: {"params": [...], "lr_scale": m,
    "weight_decay": 0.0}; [] when no layer learns quantizer state (every scheme but ttq).
    The caller builds its optimizer with these groups (lr = base lr * lr_scale) next to a
    group of all other parameters. Weight decay stays off: TTQ's scales are learned as
    log Wp, log Wn, and decay would pull them towards 1, which means nothing to the layer.
    Shared layers and parameters appear once; frozen ones (requires_grad False) not at all.
    """
    by_scale: dict[float, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for _, layer in quantized_layers(model):
        for p in layer.quantizer_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                by_scale.setdefault(layer.quantizer_lr_scale, []).append(p)
    return [{"params": ps, "lr_scale": m, "weight_decay": 0.0} for m, ps in by_scale.items()]


@torch.no_grad()
def clip_latent_(model: nn.Module) -> None:
    """Clip BinaryConnect latent weights to [-H, H]; call after every optimizer step
    (e.g. from LightningModule.on_train_batch_end). A no-op for the other schemes."""
    for _, layer in quantized_layers(model):
        layer.clip_latent_()


@torch.no_grad()
def convert_int8(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Turn an int8 QAT model (from `quantize(model, "int8")`) into a real int8 CPU model.

    Each int8 QConv2d / QLinear becomes Sequential(Quantize, torch.ao.nn.quantized.Conv2d /
    Linear, DeQuantize) with the scales its fake-quant modules learned; everything else
    (BN, activations, adds, concats, the fp first/last layers) stays in float, so any graph
    converts. The result is in eval mode and must run with torch.backends.quantized.engine
    set to the backend it was converted for, which this function sets (a process-wide torch
    setting). Raises ValueError if a layer's observers have never seen data: run some
    training-mode batches first.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.float().eval()  # int8 kernels in, fp32 around them
    layers = [(n, m) for n, m in quantized_layers(model) if m.scheme == "int8"]
    if not layers:
        raise ValueError("convert_int8: model has no int8 layers; call quantize(model, 'int8') first")
    backends = {m.options["backend"] for _, m in layers}
    if len(backends) > 1:
        raise ValueError(f"convert_int8: layers use several backends {sorted(backends)}")
    backend = backends.pop()
    if torch.backends.quantized.engine != backend:
        torch.backends.quantized.engine = backend
    replaced = {id(m): _to_int8(name, m) for name, m in layers}
    _swap(model, replaced)
    return model


def _to_int8(name: str, layer: QConv2d | QLinear) -> nn.Sequential:
    for part in ("input_fake_quant", "weight_fake_quant", "output_fake_quant"):
        obs = getattr(layer, part).activation_post_process
        if not torch.isfinite(obs.min_val).all():
            raise ValueError(f"convert_int8: {name}.{part} has seen no data; run training-mode batches first")
    wfq = layer.weight_fake_quant
    w = layer.weight.detach().float()
    qweight = quantize_weight_int8(w, wfq.scale, wfq.zero_point)
    bias = None if layer.bias is None else layer.bias.detach().float()
    if isinstance(layer, QConv2d):
        if layer.padding_mode != "zeros":
            mode = layer.padding_mode
            raise ValueError(f"convert_int8: {name} uses padding_mode={mode!r}; only 'zeros' converts")
        q = nnq.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=bias is not None,
        )
    else:
        q = nnq.Linear(layer.in_features, layer.out_features, bias_=bias is not None)
    q.set_weight_bias(qweight, bias)
    ofq = layer.output_fake_quant
    q.scale = float(ofq.scale)
    q.zero_point = int(ofq.zero_point)
    ifq = layer.input_fake_quant
    quant = nnq.Quantize(float(ifq.scale), int(ifq.zero_point), torch.quint8)
    return nn.Sequential(quant, q, nnq.DeQuantize())
