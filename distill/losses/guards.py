"""Checks a job runs before training on how its student meets its logit terms.

A student whose class scores pass through a ReLU (SqueezeNet's classifier conv is followed
by one, as in the paper) can only produce logits >= 0. Hard-label cross-entropy does not mind:
only differences between logits matter and the target class can rise above zeros. A logit
term does: KD at temperature T pulls every logit towards the teacher's (high T: z_s - z_t ->
const), a teacher's non-target logits are mostly negative, and a score the ReLU holds at 0
gets no gradient at all, so for most of the classes the distillation signal is lost exactly
where the teacher says "not this". The same goes for a sigmoid or softmax head.
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
    hint = " (student.options.head_relu: false removes it)" if hasattr(model, "head") and "head" in layer else ""
    return (f"student {arch}: its class scores pass through {layer!r} ({type(model.get_submodule(layer)).__name__}) "
            f"and cannot go negative, so the logit term(s) {terms} cannot follow a teacher's negative logits and a "
            f"score held at 0 gets no gradient{hint}; `standardize: true` on the terms compares z-scores instead")
