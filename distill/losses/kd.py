"""Hinton et al. (2015) knowledge distillation and plain cross-entropy.

KD term:   L_kd = T^2 * KL( p_T || softmax(z_s / T) ),  averaged over the batch,
           p_T = softmax(z_t / T) for one teacher, or the ensemble combination
           of the teachers' softened outputs (see ``teachers.ensemble``).
The T^2 factor keeps the soft-target gradients at the same scale as the
hard-label gradients when T changes (Hinton et al., section 2).
CE term:   L_ce = -sum_c y_c log softmax(z_s)_c  (y one-hot or mixed).
The job spec weighs them: total = w_ce * L_ce + w_kd * L_kd.

Both take ``start_epoch`` so that, after a FitNets hint stage of N epochs,
KD and CE start at epoch N. KD's target options (one teacher, the ensemble by a combine rule,
each teacher in turn, logit standardization) are those of every logit term: ``soft_targets``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossInputs, LossTerm
from .soft_targets import SoftTargetTerm, Target, student_logits


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

    def __init__(self, name: str, start_epoch: int = 0) -> None:
        super().__init__(name)
        self.set_epochs(start_epoch)

    def forward(self, inp: LossInputs) -> torch.Tensor:
        z = student_logits(inp)
        targets = inp.targets if inp.targets.dim() == 1 else inp.targets.to(z.dtype)
        return soft_cross_entropy(z, targets)


class KDTerm(SoftTargetTerm):
    """Softened KL to one teacher, the combined ensemble, or each teacher (``per_teacher``)."""

    def __init__(self, name: str, temperature: float = 4.0, teacher: str | None = None,
                 combine: str = "mean_probs", standardize: bool = False, per_teacher: bool = False,
                 start_epoch: int = 0) -> None:
        super().__init__(name, temperature, teacher, combine, standardize, per_teacher, start_epoch)

    def soft_loss(self, z_s: torch.Tensor, target: Target, inp: LossInputs) -> torch.Tensor:
        return kd_kl(z_s, target(self.temperature), self.temperature)
