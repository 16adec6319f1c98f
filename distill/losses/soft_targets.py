"""What every logit-based term shares: where its soft target comes from.

A logit term (KD, DKD, DIST, MLKD) compares the student's logits with a soft target at
some temperature. The target is one of three things, chosen by options every such term takes:

- ``teacher: <name>``: that teacher alone;
- default: the ensemble, combined per batch by ``combine`` (``teachers.ensemble``: mean_probs,
  mean_logits, or the per-sample confidence rules entropy_weighted / label_weighted);
- ``per_teacher: true``: the term against each teacher in turn, summed with the teachers' spec
  weights normalized: L = sum_i (w_i / sum_j w_j) L(student, teacher_i). Methods whose targets are
  not probabilities of a mixture (DIST's correlations, MLKD's Gram matrices) then see each
  teacher's own prediction rather than an average that no teacher made.

``standardize: true`` is logit standardization (Sun et al., 2024): every logit vector, the
student's and each teacher's, is replaced by its z-score before the temperature,

    Z(z) = (z - mean_c z) / (std_c z + eps)        (population std over the classes, eps = 1e-7)

so the student matches the teacher's *shape* of logits, not their scale or offset (a small
student, or a student whose logits cannot go negative, need not reproduce a teacher's logit range).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from teachers.ensemble import COMBINE_RULES, combine_probs

from .base import LossInputs, LossTerm

STANDARDIZE_EPS = 1e-7
Target = Callable[[float], torch.Tensor]  # temperature -> soft target [B, C]


def standardize_logits(z: torch.Tensor) -> torch.Tensor:
    """Z(z) = (z - mean) / (std + eps) over the class dimension (population std)."""
    mean = z.mean(dim=1, keepdim=True)
    std = z.std(dim=1, keepdim=True, correction=0)
    return (z - mean) / (std + STANDARDIZE_EPS)


def student_logits(inp: LossInputs) -> torch.Tensor:
    """Student logits in at least fp32 (bf16/fp16 under mixed precision; float64 stays float64)."""
    z = inp.student_logits
    return z.to(torch.promote_types(z.dtype, torch.float32))


def check_soft_target_options(name: str, temperature: float, combine: str) -> None:
    """One-line errors for the options KD-like terms share."""
    if not float(temperature) > 0:
        raise ValueError(f"loss term {name!r}: temperature must be > 0, got {temperature}")
    if combine not in COMBINE_RULES:
        raise ValueError(f"loss term {name!r}: combine must be one of {list(COMBINE_RULES)}, got {combine!r}")


class SoftTargetTerm(LossTerm):
    """Base of the logit terms: subclasses implement ``soft_loss(z_s, target, inp)``, where
    ``target(T)`` gives the soft target at temperature T and ``z_s`` are the (standardized, if
    asked) student logits in at least fp32."""

    def __init__(self, name: str, temperature: float, teacher: str | None, combine: str,
                 standardize: bool, per_teacher: bool, start_epoch: int) -> None:
        super().__init__(name)
        check_soft_target_options(name, temperature, combine)
        if per_teacher and teacher is not None:
            raise ValueError(f"loss term {name!r}: per_teacher compares with every teacher; "
                             f"drop teacher: {teacher!r} (or per_teacher)")
        self.temperature = float(temperature)
        self.teacher = teacher
        self.combine = combine
        self.standardize = bool(standardize)
        self.per_teacher = bool(per_teacher)
        self.set_epochs(start_epoch)

    def soft_loss(self, z_s: torch.Tensor, target: Target, inp: LossInputs) -> torch.Tensor:
        raise NotImplementedError

    def _teacher_logits(self, inp: LossInputs, dtype: torch.dtype) -> list[torch.Tensor]:
        if not inp.teacher_logits:
            raise ValueError(f"loss term {self.name!r}: needs teacher outputs, but the batch has none")
        z = [t.detach().to(dtype) for t in inp.teacher_logits]
        return [standardize_logits(t) for t in z] if self.standardize else z

    def target(self, inp: LossInputs, logits: list[torch.Tensor], weights: list[float], dtype: torch.dtype) -> Target:
        targets = inp.targets
        return lambda t: combine_probs(logits, weights, t, self.combine, targets).to(dtype)

    def forward(self, inp: LossInputs) -> torch.Tensor:
        z = student_logits(inp)
        if self.standardize:
            z = standardize_logits(z)
        teachers = self._teacher_logits(inp, z.dtype)
        weights = inp.teacher_weights or [1.0] * len(teachers)
        if self.teacher is not None:
            i = self.teacher_index(inp, self.teacher)
            return self.soft_loss(z, self.target(inp, [teachers[i]], [1.0], z.dtype), inp)
        if not self.per_teacher:
            return self.soft_loss(z, self.target(inp, teachers, weights, z.dtype), inp)
        total = sum(weights)
        return sum(w / total * self.soft_loss(z, self.target(inp, [t], [1.0], z.dtype), inp)
                   for t, w in zip(teachers, weights, strict=True))
