"""One-call model transforms for low-precision students (torchao `quantize_` style).

    qmodel = quantize(model, "ttq")                  # train qmodel as usual
    qmodel = quantize(model, "dorefa", bits=2)
    qmodel = quantize(model, "int8"); ...QAT...; int8_model = convert_int8(qmodel)

`quantize` swaps every nn.Conv2d / nn.Linear (exact types; subclasses with their own
forward are left alone) for `QConv2d` / `QLinear`, copying weights. The first and the
last of those layers in module order (the stem conv and the classifier, which is a
1x1 conv in SqueezeNet) stay in full precision by default, as in the papers. For schemes
with ``skip_depthwise`` set (ttq: see students/schemes/ttq.py) the depthwise convs
(groups == in_channels) stay in full precision too unless skip_depthwise=False.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .qlayers import QConv2d, QLinear
from .schemes import SCHEMES, make_scheme

__all__ = [
    "SCHEMES",
    "quantize",
    "quantized_layers",
    "quantizer_param_groups",
    "clip_latent_",
    "convert_int8",
]


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

    scheme          one of SCHEMES: binary-connect, xnor, twn, ttq, dorefa, int8 (students.schemes)
    keep_first      keep the first Conv2d/Linear (module order) in full precision
    keep_last       keep the last Conv2d/Linear (the classifier) in full precision
    skip_depthwise  keep depthwise convs (groups == in_channels) in full precision;
                    None (default): the scheme's ``skip_depthwise`` (True for ttq)
    exclude         qualified module names to keep in full precision
    inplace         modify `model` itself instead of a deep copy
    options         the scheme's options (the fields of its class in students/schemes/):
                    binary-connect: stochastic=False, scale="rms"; xnor: binarize_input=True;
                    twn: threshold_factor=0.7;
                    ttq: threshold_factor=0.05, grads="normalized", scale_lr=1.0;
                    dorefa: bits=4, act_bits=bits (32 = fp activations); int8: backend="x86"

    Raises ValueError naming an unknown scheme, option or excluded name, or a model that is
    already quantized.
    """
    config = make_scheme(scheme, **options)  # one scheme object for every layer: it holds no tensors
    if skip_depthwise is None:
        skip_depthwise = config.skip_depthwise
    exclude = set(exclude)
    all_names = {name for name, _ in model.named_modules()}
    missing = sorted(exclude - all_names)
    if missing:
        raise ValueError(f"exclude: model has no module named {missing[0]!r}")
    for name, m in model.named_modules():
        if isinstance(m, QConv2d | QLinear):
            raise ValueError(f"model is already quantized: {name!r} uses scheme {m.scheme.name!r}")

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
            replaced[id(m)] = cls.from_float(m, config)
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
    layers = [(n, m) for n, m in quantized_layers(model) if m.scheme.int8_backend is not None]
    if not layers:
        raise ValueError("convert_int8: model has no int8 layers; call quantize(model, 'int8') first")
    backends = {m.scheme.int8_backend for _, m in layers}
    if len(backends) > 1:
        raise ValueError(f"convert_int8: layers use several backends {sorted(backends)}")
    backend = backends.pop()
    if torch.backends.quantized.engine != backend:
        torch.backends.quantized.engine = backend
    replaced = {id(m): m.scheme.int8_module(m, name) for name, m in layers}
    _swap(model, replaced)
    return model
