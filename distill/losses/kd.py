"""Hinton et al. (2015) knowledge distillation and plain cross-entropy.

KD term:   L_kd = T^2 * KL( p_T || softmax(z_s / T) ),  averaged over the batch,
           p_T = softmax(z_t / T) for one teacher, or the ensemble combination
           of the teachers' softened outputs (see ``teachers.ensemble``).
The T^2 factor keeps the soft-target gradients at the same scale as the
hard-label gradients when T changes (Hinton et al., section 2).
CE term:   L_ce = -sum_c y_c log softmax(z_s)_c  (y one-hot or mixed).
The job spec weighs them: total = w_ce * L_ce + w_kd * L_kd.

Both take ``start_epoch`` so that, after a FitNets hint stage of N epochs,
KD and CE start at epoch N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from teachers.ensemble import COMBINE_RULES, combine_probs

from .base import LossInputs, LossTerm


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for index targets ``[B]`` or probability targets ``[B, C]``."""
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets)
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def kd_kl(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(target || softmax(student/T)), averaged over the batch."""
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    kl = F.kl_div(log_q, target_probs, reduction="batchmean")
    return kl * temperature**2


def check_soft_target_options(name: str, temperature: float, combine: str) -> None:
    """One-line errors for the options KD-like terms share."""
    if not float(temperature) > 0:
        raise ValueError(f"loss term {name!r}: temperature must be > 0, got {temperature}")
    if combine not in COMBINE_RULES:
        raise ValueError(f"loss term {name!r}: combine must be one of {list(COMBINE_RULES)}, got {combine!r}")


def teacher_probs(term: LossTerm, inp: LossInputs, teacher: str | None, temperature: float,
                  combine: str) -> torch.Tensor:
    """Softened target ``[B, C]``: one named teacher's, or the weighted ensemble's (``teacher=None``)."""
    if teacher is not None:
        logits, weights = [inp.teacher_logits[term.teacher_index(inp, teacher)]], [1.0]
    else:
        if not inp.teacher_logits:
            raise ValueError(f"loss term {term.name!r}: needs teacher outputs, but the batch has none")
        logits = inp.teacher_logits
        weights = inp.teacher_weights or [1.0] * len(logits)
    return combine_probs([z.detach() for z in logits], weights, temperature, combine)


def student_logits(inp: LossInputs) -> torch.Tensor:
    """Student logits in at least fp32 (bf16/fp16 under mixed precision; float64 stays float64)."""
    z = inp.student_logits
    return z.to(torch.promote_types(z.dtype, torch.float32))


class CrossEntropyTerm(LossTerm):
    """Hard-label cross-entropy (the 'student learns from data' half of KD)."""

    needs_teacher = False

    def __init__(self, name: str, start_epoch: int = 0) -> None:
        super().__init__(name)
        self.set_epochs(start_epoch)

    def forward(self, inp: LossInputs) -> torch.Tensor:
        z = student_logits(inp)
        targets = inp.targets if inp.targets.dim() == 1 else inp.targets.to(z.dtype)
        return soft_cross_entropy(z, targets)


class KDTerm(LossTerm):
    """Softened KL to one teacher (``teacher`` set) or to the combined ensemble (``teacher=None``)."""

    def __init__(self, name: str, temperature: float = 4.0, teacher: str | None = None,
                 combine: str = "mean_probs", start_epoch: int = 0) -> None:
        super().__init__(name)
        check_soft_target_options(name, temperature, combine)
        self.temperature = float(temperature)
        self.teacher = teacher
        self.combine = combine
        self.set_epochs(start_epoch)

    def forward(self, inp: LossInputs) -> torch.Tensor:
        z = student_logits(inp)
        target = teacher_probs(self, inp, self.teacher, self.temperature, self.combine)
        return kd_kl(z, target.to(z.dtype), self.temperature)
