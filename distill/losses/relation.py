"""Relational terms: the student keeps the teacher's relations between the samples of a batch.

Each compares, per ``[student_path, teacher_path]`` pair of one teacher, a structure built over
the batch, so the student's and the teacher's widths never need to agree and nothing is learned.
Maps ``[B, C, H, W]`` are globally average-pooled to embeddings ``[B, C]`` for RKD and PKT
(the penultimate-layer embeddings the papers use); SP flattens them whole, as its paper does.

RKD, relational KD (Park et al., 2019), with e_i the embeddings and Huber = smooth L1 (delta 1):
    distance:  psi_D(i, j) = ||e_i - e_j|| / mu,  mu = mean_{i != j} ||e_i - e_j||
               L_D = mean_{i != j} Huber(psi_D^S(i, j) - psi_D^T(i, j))
    angle:     psi_A(i, j, k) = <u_ij, u_kj>,  u_ij = (e_i - e_j) / ||e_i - e_j||  (u_jj = 0)
               L_A = mean_{i, j, k} Huber(psi_A^S(i, j, k) - psi_A^T(i, j, k))   (all B^3 triplets)
    L_rkd = distance * L_D + angle * L_A          (the paper: 25 and 50; here 1 and 2, the
                                                   spec weight scales both, 25 gives the paper's)

PKT, probabilistic knowledge transfer (Passalis & Tefas, 2018), with the cosine kernel
    K(i, j) = (cos(e_i, e_j) + 1) / 2,   p(j | i) = K(i, j) / sum_{k != i} K(i, k)   (j != i)
    L_pkt = mean_i sum_{j != i} p_T(j|i) * log((p_T(j|i) + eps) / (p_S(j|i) + eps))   (eps = 1e-7)

SP, similarity-preserving KD (Tung & Mori, 2019), with Q the flattened activations ``[B, CHW]``:
    G = Q Q^T,  G~ = G with each row L2-normalized,  L_sp = ||G~_S - G~_T||_F^2 / B^2
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .features import FeaturePairsTerm, as_vectors

PKT_EPS = 1e-7


def _off_diagonal(b: int, device: torch.device) -> torch.Tensor:
    return ~torch.eye(b, dtype=torch.bool, device=device)


def pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """``||e_i - e_j||`` as ``[B, B]``; the diagonal is 0 and carries no gradient (no sqrt at 0)."""
    sq = (e[:, None, :] - e[None, :, :]).pow(2).sum(-1)
    off = _off_diagonal(e.shape[0], e.device)
    return torch.where(off, sq.clamp_min(1e-12).sqrt(), torch.zeros_like(sq))


def rkd_distance(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    off = _off_diagonal(s.shape[0], s.device)
    d_s, d_t = pairwise_distances(s), pairwise_distances(t)
    psi_s, psi_t = d_s / d_s[off].mean(), d_t / d_t[off].mean()
    return F.smooth_l1_loss(psi_s[off], psi_t[off])


def angle_cosines(e: torch.Tensor) -> torch.Tensor:
    """psi_A ``[B, B, B]`` indexed [j, i, k]: the cosine at e_j of the triangle (e_i, e_j, e_k)."""
    diff = e[None, :, :] - e[:, None, :]  # [j, i] = e_i - e_j
    norm = diff.pow(2).sum(-1, keepdim=True)
    off = _off_diagonal(e.shape[0], e.device)[..., None]
    u = torch.where(off, diff / norm.clamp_min(1e-24).sqrt(), torch.zeros_like(diff))
    return u @ u.transpose(1, 2)


def rkd_angle(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(angle_cosines(s), angle_cosines(t))


def pkt_conditional(e: torch.Tensor) -> torch.Tensor:
    """p(j | i) ``[B, B]`` from the cosine kernel; the diagonal is 0."""
    n = F.normalize(e, dim=1)
    k = (n @ n.T + 1) / 2
    k = k * _off_diagonal(e.shape[0], e.device)
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    p_s, p_t = pkt_conditional(s), pkt_conditional(t)
    off = _off_diagonal(s.shape[0], s.device)
    kl = p_t * torch.log((p_t + PKT_EPS) / (p_s + PKT_EPS))
    return (kl * off).sum(dim=1).mean()


def sp_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    g_s = F.normalize(s.flatten(1) @ s.flatten(1).T, dim=1)
    g_t = F.normalize(t.flatten(1) @ t.flatten(1).T, dim=1)
    return (g_s - g_t).pow(2).sum() / s.shape[0] ** 2


def _need_batch(term: FeaturePairsTerm, s: torch.Tensor, least: int) -> None:
    if s.shape[0] < least:
        raise ValueError(f"loss term {term.name!r}: relations need batches of >= {least} samples, got {s.shape[0]}")


class RKDTerm(FeaturePairsTerm):
    """Relational KD: distance- and angle-wise potentials of the batch's embeddings."""

    def __init__(self, name: str, teacher: str | None, pairs: Sequence[Sequence[str]], distance: float = 1.0,
                 angle: float = 2.0, start_epoch: int = 0, stage_epochs: int | None = None) -> None:
        super().__init__(name, teacher, pairs, start_epoch, stage_epochs)
        if distance < 0 or angle < 0 or distance + angle == 0:
            raise ValueError(f"loss term {name!r}: distance and angle must be >= 0 and not both 0, "
                             f"got {distance}, {angle}")
        self.distance, self.angle = float(distance), float(angle)

    def pair_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _need_batch(self, s, 3 if self.angle else 2)
        s, t = as_vectors(s), as_vectors(t)
        out = s.new_zeros(())
        if self.distance:
            out = out + self.distance * rkd_distance(s, t)
        if self.angle:
            out = out + self.angle * rkd_angle(s, t)
        return out


class PKTTerm(FeaturePairsTerm):
    """Probabilistic knowledge transfer: KL between the batch's cosine-kernel neighbour distributions."""

    def pair_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _need_batch(self, s, 2)
        return pkt_loss(as_vectors(s), as_vectors(t))


class SPTerm(FeaturePairsTerm):
    """Similarity-preserving KD: row-normalized batch Gram matrices of the flattened activations."""

    def pair_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return sp_loss(s, t)
