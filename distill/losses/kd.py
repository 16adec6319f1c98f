"""Hinton et al. (2015) knowledge distillation and plain cross-entropy.

KD term:   L_kd = T^2 * KL( p_T || softmax(z_s / T) ),
           p_T = softmax(z_t / T) for one teacher, or the ensemble combination
           of the teachers' softened outputs (see ``teachers.ensemble``).
The T^2 factor keeps the soft-target gradients at the same scale as the
hard-label gradients when T changes (Hinton et al., section 2).
CE term:   L_ce = -sum_c y_c log softmax(z_s)_c  (y one-hot or mixed).
The job spec weighs them: total = w_ce * L_ce + w_kd * L_kd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from teachers.ensemble import combine_probs

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


class CrossEntropyTerm(LossTerm):
    """Hard-label cross-entropy (the 'student learns from data' half of KD)."""

    needs_teacher = False

    def forward(self, inp: LossInputs) -> torch.Tensor:
        return soft_cross_entropy(inp.student_logits, inp.targets)


class KDTerm(LossTerm):
    """Softened KL to one teacher (``teacher`` set) or to the combined ensemble."""

    def __init__(self, name: str, temperature: float = 4.0, teacher: str | None = None,
                 combine: str = "mean_probs") -> None:
        super().__init__(name)
        self.temperature = float(temperature)
        self.teacher = teacher
        self.combine = combine

    def forward(self, inp: LossInputs) -> torch.Tensor:
        if self.teacher is not None:
            i = inp.teacher_names.index(self.teacher)
            logits, weights = [inp.teacher_logits[i]], [1.0]
        else:
            logits, weights = inp.teacher_logits, inp.teacher_weights
        target = combine_probs(logits, weights, self.temperature, self.combine)
        return kd_kl(inp.student_logits.float(), target, self.temperature)
