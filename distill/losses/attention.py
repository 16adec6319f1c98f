"""Activation-based attention transfer (Zagoruyko & Komodakis, 2017).

Attention map of a feature ``A`` with channels ``A_c`` (paper's F_sum^p):

    Q = sum_c |A_c|^p            (p = 2 by default, as in the paper)
    q = vec(Q) / ||vec(Q)||_2

Loss over the (student path, teacher path) pairs j, exactly the paper's eq. 2
with its norm p = 2 (the plain, *not squared* L2 distance), averaged over the batch:

    L_at = beta/2 * sum_j  mean_b || q_S^j(b) - q_T^j(b) ||_2

Each per-pair distance lies in [0, 2]. The paper folds batch size and map size
into beta (10^3 / (H*W*B) on a squared form); here beta defaults to 1 and the
spec's term weight scales the term, so beta and weight multiply.

Channel counts may differ (Q sums them away). When the two maps differ in
spatial size, the larger attention map Q is adaptive-average-pooled to the
smaller one's size before normalization.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .features import FeaturePairsTerm, pool_to_smaller


def attention_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Q = sum_c |A_c|^p as a ``[B, 1, H, W]`` map (not yet normalized)."""
    return feat.abs().pow(p).sum(dim=1, keepdim=True)


def at_distance(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """mean_b || q_S(b) - q_T(b) ||_2 for one pair of ``[B, C, H, W]`` features."""
    qs, qt = pool_to_smaller(attention_map(student_feat, p), attention_map(teacher_feat, p))
    qs = F.normalize(qs.flatten(1), dim=1)
    qt = F.normalize(qt.flatten(1), dim=1)
    return torch.linalg.vector_norm(qs - qt, ord=2, dim=1).mean()


class AttentionTransferTerm(FeaturePairsTerm):
    """Attention transfer from one teacher over pairs ``[[student_path, teacher_path], ...]``."""

    def __init__(self, name: str, teacher: str | None, pairs: Sequence[Sequence[str]],
                 beta: float = 1.0, p: float = 2.0, start_epoch: int = 0,
                 stage_epochs: int | None = None) -> None:
        super().__init__(name, teacher, pairs, start_epoch, stage_epochs)
        if p <= 0:
            raise ValueError(f"loss term {name!r}: p must be > 0, got {p}")
        self.beta = float(beta)
        self.p = float(p)

    def pair_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if s.dim() != 4 or t.dim() != 4:
            raise ValueError(f"loss term {self.name!r}: attention transfer needs [B, C, H, W] maps, got "
                             f"student {list(s.shape)} / teacher {list(t.shape)}")
        return self.beta / 2 * at_distance(s, t, self.p)
