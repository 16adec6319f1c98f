"""Train and evaluate a low-bit student in the arithmetic of its packed export.

A packed export (``students.export``) computes three things differently from the trained
model's float forward: it rounds the input of every int8-activation layer to int8 per row,
it folds each BatchNorm into the layer before it (per-channel scale and bias), and it sums
integer products exactly. The last two change values by float rounding only (~1e-7), but an
int8 rounding is a step: a value within float rounding of a step lands on the other code,
that one-code change (~0.4% of the row's range) reaches the logits, and near-tie predictions
flip. Measured on the CIFAR-10 TTQ student (MobileNet v1 0.5, 5,000 images): the float32
model disagrees with its own float64 self on 0.24% of top-1 predictions for this reason
alone, so no export can match a float-evaluated model to 99.9%.

``simulate_export(model)`` makes the trained model compute what the export deploys:

- training: a forward pre-hook rounds the input of each layer that export runs on int8
  activations (QLinear, 1x1 QConv2d of twn / ttq / binary-connect / xnor without binary
  inputs) to int8 per row, with a straight-through gradient, so weights and BN statistics
  adapt to it. (k x k convs are rounded per patch by the kernels, which no input hook can
  express; their eval below is exact all the same.)
- evaluation: every module with a conv/linear child runs its own forward with those
  children swapped for what export puts there (``students.deployed.deployed_children``): BN
  folded, ReLU / ReLU6 fused, quantized layers as packed layers on the plain-torch reference
  ops (``kernels.reference``, the kernels' spec, equal to them bit for bit: integer sums,
  the same float epilogue), fp convs with channels-last weights as in the export. The swap
  is undone when the forward ends, also on error. Its modules are built from the live
  weights and kept for the next eval forward while the weights and BN statistics still
  equal those they were built from (and inference mode is as it was: tensors made under
  it cannot enter autograd), so validation batches do not each pack the whole net again.

So the validation accuracy logged in training, ``distill eval`` and the exported file
compute the same numbers. This is the integer-arithmetic emulation of quantization-aware
training (Jacob et al. 2018: BN folded, the inference rounding in the graph). Only fp32
models are emulated: a bf16 / fp16 model evaluates with the training-time hooks alone.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from kernels import reference

from .deployed import PACKED, deployed_children, is_layer
from .qlayers import QConv2d, QLinear

__all__ = ["remove_simulation", "simulate_export", "unsimulated"]


def simulate_export(model: nn.Module, exact_eval: bool = True) -> list[RemovableHandle]:
    """Install the training and evaluation hooks described above on ``model`` (in place).

    ``exact_eval=False`` installs the int8 rounding hooks alone (training and eval), the
    eval staying in float arithmetic: what ``benchmarks.export_agreement`` compares against.
    Returns the hooks' handles (``h.remove()`` for each undoes it; so does
    ``remove_simulation(model)``, which also works on a deep copy). Calling it again
    replaces the previous installation.
    """
    remove_simulation(model)
    handles = []
    uses = Counter(id(c) for m in model.modules() for c in m._modules.values() if c is not None)
    for m in model.modules():
        if isinstance(m, QConv2d | QLinear) and m.scheme.packed_int8_input:
            if not isinstance(m, QConv2d) or (m.groups == 1 and m.kernel_size == (1, 1) and m.padding == (0, 0)):
                handles.append(m.register_forward_pre_hook(_int8_rows_hook))
        if is_layer(m) and uses[id(m)] > 1:
            m._export_shared = True  # export converts a shared layer once and folds nothing into it
        if exact_eval and any(is_layer(c) for c in m._modules.values()):
            handles.append(m.register_forward_pre_hook(_swap_in_deployed))
            handles.append(m.register_forward_hook(_restore_trained, always_call=True))
    return handles


def remove_simulation(model: nn.Module) -> None:
    """Remove every hook ``simulate_export`` installed on ``model`` (or on the model it was copied from)."""
    ours = (_int8_rows_hook, _swap_in_deployed, _restore_trained)
    for m in model.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for key in [k for k, h in hooks.items() if h in ours]:
                del hooks[key]
                m._forward_hooks_always_called.pop(key, None)
        _restore_trained(m, (), None)
        m.__dict__.pop("_deployed_cache", None)


def unsimulated(model: nn.Module) -> nn.Module:
    """``model`` itself, or a copy without the simulation when it has one: what cost figures
    (MACs, latency) should measure. The eval view runs the export's layers on the reference
    ops (TTQ as two float matmuls), which neither costs what the architecture costs nor runs
    as fast as the packed file."""
    ours = (_int8_rows_hook, _swap_in_deployed)
    if not any(h in ours for m in model.modules() for h in m._forward_pre_hooks.values()):
        return model
    copied = copy.deepcopy(model)
    remove_simulation(copied)
    return copied


def _int8_rows_hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The input rounded to int8 per row (a conv's row: one pixel's channels), straight-through."""
    x = args[0]
    rows = x.movedim(1, -1) if isinstance(module, nn.Conv2d) else x
    with torch.no_grad():
        q, scale = reference.quantize_rows_int8(rows.reshape(-1, rows.shape[-1]))
        deq = (q.float() * scale[:, None]).reshape(rows.shape).to(x.dtype)
        deq = deq.movedim(-1, 1) if isinstance(module, nn.Conv2d) else deq
    return (x + (deq - x).detach(), *args[1:])


def _swap_in_deployed(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Eval only: put the export's version of each conv/linear child in place for this forward."""
    x = args[0] if args else None
    if module.training or not isinstance(x, Tensor) or x.dtype != torch.float32:
        return
    if any(isinstance(c, QConv2d | QLinear) and not c.scheme.supports("packed") for c in module.children()):
        return  # layers without a packed form (dorefa, int8) evaluate as trained
    weights, inference = _children_weights(module), torch.is_inference_mode_enabled()
    cached = module.__dict__.get("_deployed_cache")  # (built in inference mode?, weights then, modules)
    if cached is None or cached[0] != inference or not _same(cached[1], weights):
        with torch.no_grad():
            new = deployed_children(module, lambda layer: getattr(layer, "_export_shared", False))
            new = {name: _as_deployed(child, module._modules[name]) for name, child in new.items()}
            cached = module.__dict__["_deployed_cache"] = (inference, [w.clone() for w in weights], new)
    module.__dict__["_trained_children"] = {name: module._modules[name] for name in cached[2]}
    module._modules.update(cached[2])


def _children_weights(module: nn.Module) -> list[Tensor]:
    """The tensors the export's view of ``module``'s children is built from: those of its
    conv/linear/BN children."""
    return [t for c in module.children() if is_layer(c) or isinstance(c, nn.modules.batchnorm._BatchNorm)
            for t in (*c.parameters(), *c.buffers())]  # fmt: skip


def _same(built_from: list[Tensor], now: list[Tensor]) -> bool:
    """Whether the weights are still those the view was built from, compared by value: version
    counters miss writes through another tensor (DeepSpeed's ZeRO-1/2 write the updated weights
    into a flat buffer the parameters' storage lies in), and one pass over a student's weights
    costs far less than packing them again."""
    return len(built_from) == len(now) and all(torch.equal(a, b) for a, b in zip(built_from, now, strict=True))


def _restore_trained(module: nn.Module, args: Any, output: Any) -> None:
    """Put the trained children back (runs after every forward, also when it raised)."""
    stash = module.__dict__.pop("_trained_children", None)
    if stash:
        module._modules.update(stash)


def _as_deployed(new: nn.Module, trained: nn.Module) -> nn.Module:
    """The module as the exported file runs it: packed layers on the reference ops, convs in
    channels-last (the export converts the whole model; oneDNN sums in another order in NCHW)."""
    if isinstance(new, PACKED):
        new.use_reference = True
    elif isinstance(new, nn.Conv2d):
        if new is trained:  # export kept the live layer: use a copy, the trained one stays NCHW
            new = copy.deepcopy(new)
        new = new.to(memory_format=torch.channels_last)
    return new
