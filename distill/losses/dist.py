"""DIST: knowledge distillation from a stronger teacher by correlation (Huang et al., 2022).

With Y_S = softmax(z_S / T) and Y_T the teacher's (or the ensemble's) softened probabilities,
both ``[B, C]``, and the Pearson distance d(u, v) = 1 - rho(u, v),

    rho(u, v) = <u - mean(u), v - mean(v)> / (||u - mean(u)|| * ||v - mean(v)|| + eps)   (eps = 1e-8)

    L_inter = T^2 * mean_b d(Y_S[b, :], Y_T[b, :])      (each sample's ranking of the classes)
    L_intra = T^2 * mean_c d(Y_S[:, c], Y_T[:, c])      (each class's ranking of the samples)
    L_dist  = beta * L_inter + gamma * L_intra           (the paper: beta = gamma = 1)

A correlation is invariant to the scale and shift of each vector, so the student need not match
the teacher's exact probabilities, only their relations: what makes DIST robust to a large gap
between teacher and student. The intra-class part needs batches of at least 2 samples.
"""

from __future__ import annotations

import torch

from .base import LossInputs
from .soft_targets import SoftTargetTerm, Target

PEARSON_EPS = 1e-8


def pearson_distance(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """1 - Pearson correlation of ``a`` and ``b`` along ``dim`` (a vector over the other dim)."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    rho = (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + PEARSON_EPS)
    return 1.0 - rho


def dist_parts(z_s: torch.Tensor, p_t: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_inter, L_intra), each with its T^2 factor."""
    y_s = torch.softmax(z_s / temperature, dim=1)
    t2 = temperature**2
    return t2 * pearson_distance(y_s, p_t, 1).mean(), t2 * pearson_distance(y_s, p_t, 0).mean()


class DISTTerm(SoftTargetTerm):
    """beta * inter-class + gamma * intra-class Pearson distance to the soft target."""

    def __init__(self, name: str, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0,
                 teacher: str | None = None, combine: str = "mean_probs", standardize: bool = False,
                 per_teacher: bool = False, start_epoch: int = 0) -> None:
        super().__init__(name, temperature, teacher, combine, standardize, per_teacher, start_epoch)
        if beta < 0 or gamma < 0:
            raise ValueError(f"loss term {name!r}: beta and gamma must be >= 0, got {beta}, {gamma}")
        self.beta, self.gamma = float(beta), float(gamma)

    def soft_loss(self, z_s: torch.Tensor, target: Target, inp: LossInputs) -> torch.Tensor:
        if self.gamma > 0 and z_s.shape[0] < 2:
            raise ValueError(f"loss term {self.name!r}: the intra-class part needs batches of >= 2 samples")
        inter, intra = dist_parts(z_s, target(self.temperature), self.temperature)
        return self.beta * inter + self.gamma * intra
