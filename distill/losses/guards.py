"""Checks a job runs before training on how its student meets its logit terms.

A student whose class scores pass through a ReLU (SqueezeNet's classifier conv is followed
by one, as in the paper) can only produce logits >= 0. Hard-label cross-entropy does not mind:
it only needs the target's score above the others, and stops pushing once it is. KD does: it
asks the student for the teacher's logit *differences* (at high T, z_s - z_t -> a constant per
sample), and a CIFAR teacher's span some 15-30 units with most non-target classes far below the
target. The student must push those scores down until the ReLU holds them at 0, where they get
no gradient at all, and (without BatchNorm) can only widen its span by growing its weights.
Measured on digits (SqueezeNet 1.1, 300 steps, lr 0.005, BENCHMARKS.md): hard labels 0.224, KD
0.106 (chance); the same KD without the head ReLU 0.796, and with the ReLU but on standardized
logits (``standardize: true``: z-scores, which need no negative raw logit and no particular span)
0.766. The same goes for a sigmoid or softmax head. The warning names the layer and both ways out.
"""

from __future__ import annotations

import torch
from torch import nn

# Leaf modules that keep the sign of what passes through them (so a ReLU before them still decides it).
SIGN_KEEPING = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.MaxPool2d, nn.Flatten, nn.Dropout,
                nn.Identity)
NONNEGATIVE = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.Softmax)


def nonnegative_output(model: nn.Module, sample: torch.Tensor) -> str | None:
    """The module path whose output makes the model's outputs >= 0 (a ReLU after the last layer with
    weights, with only sign-keeping layers after it), or None. Found by one eval forward of ``sample``."""
    calls: list[tuple[str, nn.Module]] = []
    leaves = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(lambda mod, _i, _o, name=n: calls.append((name, mod))) for n, m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    weighted = [i for i, (_, m) in enumerate(calls) if any(True for _ in m.parameters(recurse=False))]
    tail = calls[weighted[-1] + 1:] if weighted else calls
    culprit = next((n for n, m in tail if isinstance(m, NONNEGATIVE)), None)
    if culprit is None or not all(isinstance(m, SIGN_KEEPING + NONNEGATIVE) for _, m in tail):
        return None
    return culprit if bool((out >= 0).all()) else None


def nonnegative_logits_warning(model: nn.Module, sample: torch.Tensor, arch: str, terms: list[str]) -> str | None:
    """The warning a job prints when logit terms distill into a student whose logits cannot go negative."""
    layer = nonnegative_output(model, sample)
    if layer is None or not terms:
        return None
    hint = ", or drop that ReLU (student.options.head_relu: false)" if "head" in layer else ""
    return (f"student {arch}: its class scores pass through {layer!r} ({type(model.get_submodule(layer)).__name__}) "
            f"and cannot go negative, so the logit term(s) {terms} cannot follow a teacher's negative logits and a "
            f"score held at 0 gets no gradient; set `standardize: true` on those terms (z-scored logits need no "
            f"negative scores){hint}")
