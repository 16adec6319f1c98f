"""Neuron selectivity transfer, NST (Huang & Wang, 2017).

Each channel of a map ``[C, H, W]`` is one sample of "where this neuron fires": f_k = vec(F_k)
over the H*W positions, L2-normalized. NST matches the distribution of the student's neurons to
the teacher's with the squared maximum mean discrepancy under the polynomial kernel
k(x, y) = (x^T y + c)^d (the paper's choice: d = 2, c = 0):

    MMD^2 = mean_{i,i'} k(s_i, s_i') + mean_{j,j'} k(t_j, t_j') - 2 mean_{i,j} k(s_i, t_j)

over the student's C_S and the teacher's C_T channels, averaged over the batch. Channel counts may
differ (they are two samples of one distribution); spatial sizes must agree, so the larger map is
adaptive-average-pooled to the smaller one first (``features.pool_to_smaller``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .features import FeaturePairsTerm, pool_to_smaller


def nst_mmd(s: torch.Tensor, t: torch.Tensor, degree: int = 2, c: float = 0.0) -> torch.Tensor:
    """MMD^2 between the normalized channel vectors of two ``[B, C, H, W]`` maps, batch-averaged."""
    s, t = pool_to_smaller(s, t)
    fs = F.normalize(s.flatten(2), dim=2)
    ft = F.normalize(t.flatten(2), dim=2)

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.transpose(1, 2) + c).pow(degree).mean(dim=(1, 2))

    return (k(fs, fs) + k(ft, ft) - 2 * k(fs, ft)).mean()


class NSTTerm(FeaturePairsTerm):
    """MMD^2 (polynomial kernel) between student and teacher neuron selectivity patterns."""

    def __init__(self, name: str, teacher: str | None, pairs: Sequence[Sequence[str]], degree: int = 2,
                 c: float = 0.0, start_epoch: int = 0, stage_epochs: int | None = None) -> None:
        super().__init__(name, teacher, pairs, start_epoch, stage_epochs)
        if int(degree) != degree or degree < 1 or c < 0:
            raise ValueError(f"loss term {name!r}: degree must be an integer >= 1 and c >= 0, got {degree}, {c}")
        self.degree, self.c = int(degree), float(c)

    def pair_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if s.dim() != 4 or t.dim() != 4:
            raise ValueError(f"loss term {self.name!r}: NST needs [B, C, H, W] maps, got student "
                             f"{list(s.shape)} / teacher {list(t.shape)}")
        return nst_mmd(s, t, self.degree, self.c)
