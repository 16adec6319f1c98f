"""Contrastive representation distillation, CRD (Tian et al., 2020), with a memory bank.

The student's and the teacher's embeddings (``student_path`` / ``teacher_path``; maps are globally
average-pooled) go through learned linear heads to ``dim`` and are L2-normalized: s_b, t_b. The
positive for s_b is t_b (same input); the negatives are the other samples of the batch and the
K teacher embeddings of earlier batches kept in a FIFO memory bank, and symmetrically for t_b:

    L_s = -mean_b log( exp(s_b . t_b / tau) / sum_{t' in {t_1..t_B} + bank_T} exp(s_b . t' / tau) )
    L_t = the same with the roles of student and teacher (and of the two banks) swapped
    L_crd = (L_s + L_t) / 2

This is the InfoNCE form of CRD's objective (the contrastive bound its NCE loss estimates, both
"anchor" directions as CRD does, tau = 0.07 as there). The bank holds detached embeddings of
past steps (written after each training forward, never in eval), so it costs no forward passes;
CRD keeps one embedding per dataset sample with momentum updates instead, which needs sample
indices and a bank the size of the dataset. Until the bank has filled, only the filled part is used.
The heads are trained with the student; ``student_shape``/``teacher_shape`` are measured by the
job's dry run like FitNets'.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import LossInputs, LossTerm
from .features import (
    apply_regressor,
    as_vectors,
    parse_shape,
    require_teacher,
    student_feature,
    teacher_feature,
)


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, bank: torch.Tensor, tau: float) -> torch.Tensor:
    """-mean_b log softmax over [in-batch positives and negatives, bank] at the matching column."""
    logits = torch.cat([anchor @ positive.T, anchor @ bank.T], dim=1) / tau
    return F.cross_entropy(logits, torch.arange(anchor.shape[0], device=anchor.device))


class CRDTerm(LossTerm):
    """Contrastive loss between learned embeddings of the student's and the teacher's features."""

    def __init__(self, name: str, student_path: str, teacher: str | None, teacher_path: str,
                 student_shape: Sequence[int] | None = None, teacher_shape: Sequence[int] | None = None,
                 dim: int = 128, queue_size: int = 4096, tau: float = 0.07, start_epoch: int = 0) -> None:
        super().__init__(name)
        self.student_path, self.teacher_path = student_path, teacher_path
        self.teacher = require_teacher(name, teacher)
        if dim < 1 or queue_size < 0 or not tau > 0:
            raise ValueError(f"loss term {name!r}: dim >= 1, queue_size >= 0 and tau > 0 needed, "
                             f"got {dim}, {queue_size}, {tau}")
        self.tau = float(tau)
        self.set_epochs(start_epoch)
        self.heads = nn.ModuleDict()
        if student_shape is not None and teacher_shape is not None:
            cs = parse_shape(name, "student_shape", student_shape)[0]
            ct = parse_shape(name, "teacher_shape", teacher_shape)[0]
            self.heads["student"] = nn.Linear(cs, dim)
            self.heads["teacher"] = nn.Linear(ct, dim)
        self.register_buffer("bank_s", torch.zeros(queue_size, dim))
        self.register_buffer("bank_t", torch.zeros(queue_size, dim))
        self.register_buffer("bank_fill", torch.zeros((), dtype=torch.long))
        self.register_buffer("bank_next", torch.zeros((), dtype=torch.long))

    def student_hint_paths(self) -> list[str]:
        return [self.student_path]

    def teacher_hint_paths(self) -> list[tuple[str, str]]:
        return [(self.teacher, self.teacher_path)]

    @torch.no_grad()
    def _enqueue(self, s: torch.Tensor, t: torch.Tensor) -> None:
        k = self.bank_s.shape[0]
        if k == 0:
            return
        n = min(s.shape[0], k)
        idx = (self.bank_next + torch.arange(n, device=s.device)) % k
        self.bank_s[idx] = s[-n:].detach().to(self.bank_s.dtype)
        self.bank_t[idx] = t[-n:].detach().to(self.bank_t.dtype)
        self.bank_next.copy_((self.bank_next + n) % k)
        self.bank_fill.copy_(torch.clamp(self.bank_fill + n, max=k))

    def forward(self, inp: LossInputs) -> torch.Tensor:
        if not self.heads:
            raise ValueError(f"loss term {self.name!r}: CRD needs student_shape and teacher_shape "
                             f"(the job's dry run fills them)")
        s = as_vectors(student_feature(self, inp, self.student_path))
        t = as_vectors(teacher_feature(self, inp, self.teacher, self.teacher_path)).detach().to(s.dtype)
        s = F.normalize(apply_regressor(self.heads["student"], s), dim=1)
        t = F.normalize(apply_regressor(self.heads["teacher"], t), dim=1)
        fill = int(self.bank_fill)
        # Copies: the bank is written below, after this forward, but before the backward that reads it.
        bank_s, bank_t = self.bank_s[:fill].to(s.dtype, copy=True), self.bank_t[:fill].to(s.dtype, copy=True)
        loss = (info_nce(s, t, bank_t, self.tau) + info_nce(t, s, bank_s, self.tau)) / 2
        if self.training:
            self._enqueue(s, t)
        return loss
