"""Decoupled knowledge distillation, DKD (Zhao et al., 2022).

With softened probabilities p = softmax(z / T) and the true class t, KD splits
into a target part and a non-target part:

    b      = [p_t, 1 - p_t]                          (binary: target vs the rest)
    p_hat  = softmax over the non-target logits z_{j != t} / T
    TCKD   = T^2 * KL(b_T || b_S)
    NCKD   = T^2 * KL(p_hat_T || p_hat_S)
    L_dkd  = w(epoch) * (alpha * TCKD + beta * NCKD)

(classic KD = TCKD + (1 - p_t^T) * NCKD, the paper's eq. 7; DKD frees the
NCKD weight from the teacher's confidence). Both KLs are averaged over the
batch. Teacher side: b_T and p_hat_T are taken from the teacher's softened
probabilities (p_hat_T = p_{j != t} / sum_{j != t} p_j), which equals the
softmax over non-target logits for one teacher and also works for the
combined ensemble (``teacher=None``).

Warm-up: w(epoch) = min(1, (epoch + 1) / warmup_epochs) with 0-based epochs at the
end of each epoch, ramped step by step in training; warmup_epochs=0 means w = 1 (the paper
ramps linearly over its first 20 epochs). Every term takes this option now (``base.LossTerm``);
DKD keeps it as a named argument because its paper needs it. Target options (one teacher, the
ensemble, ``per_teacher``, ``standardize``) are those of every logit term (``soft_targets``).

DKD needs class-index targets: with mixup/cutmix probability targets the
"target class" is undefined and the term raises instead of guessing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossInputs
from .soft_targets import SoftTargetTerm, Target


def dkd_parts(z_s: torch.Tensor, p_t: torch.Tensor, target: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each with its T^2 factor, from student logits, teacher probs at T and indices."""
    b, c = z_s.shape
    nontarget = ~F.one_hot(target, c).bool()
    z = z_s / temperature
    # Student: log b_S from logsumexps (stable), log p_hat_S over non-target logits only.
    z_nt = z[nontarget].view(b, c - 1)
    lse_all = torch.logsumexp(z, dim=1, keepdim=True)
    log_b_s = torch.cat([z.gather(1, target[:, None]) - lse_all,
                         torch.logsumexp(z_nt, dim=1, keepdim=True) - lse_all], dim=1)
    log_phat_s = F.log_softmax(z_nt, dim=1)
    # Teacher: from probabilities; 1 - p_t as the non-target sum (exact where p_t ~ 1).
    p_nt = p_t[nontarget].view(b, c - 1)
    rest = p_nt.sum(dim=1, keepdim=True)
    b_t = torch.cat([p_t.gather(1, target[:, None]), rest], dim=1)
    phat_t = p_nt / rest.clamp_min(torch.finfo(p_nt.dtype).tiny)
    t2 = temperature**2
    tckd = F.kl_div(log_b_s, b_t, reduction="batchmean") * t2
    nckd = F.kl_div(log_phat_s, phat_t, reduction="batchmean") * t2
    return tckd, nckd


class DKDTerm(SoftTargetTerm):
    """alpha * TCKD + beta * NCKD to one teacher, the combined ensemble, or each teacher."""

    def __init__(self, name: str, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 teacher: str | None = None, combine: str = "mean_probs", warmup_epochs: float = 0,
                 standardize: bool = False, per_teacher: bool = False, start_epoch: int = 0) -> None:
        super().__init__(name, temperature, teacher, combine, standardize, per_teacher, start_epoch)
        if alpha < 0 or beta < 0 or warmup_epochs < 0:
            raise ValueError(f"loss term {name!r}: alpha, beta and warmup_epochs must be >= 0, "
                             f"got {alpha}, {beta}, {warmup_epochs}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.set_warmup(warmup_epochs)

    def forward(self, inp: LossInputs) -> torch.Tensor:
        if inp.targets.dim() != 1:
            raise ValueError(f"loss term {self.name!r}: DKD needs class-index targets; mixup/cutmix "
                             f"give probability targets")
        if inp.student_logits.shape[1] < 2:
            raise ValueError(f"loss term {self.name!r}: DKD needs at least 2 classes, got "
                             f"{inp.student_logits.shape[1]}")
        return super().forward(inp)

    def soft_loss(self, z_s: torch.Tensor, target: Target, inp: LossInputs) -> torch.Tensor:
        tckd, nckd = dkd_parts(z_s, target(self.temperature), inp.targets, self.temperature)
        return self.alpha * tckd + self.beta * nckd
