"""Flow of solution procedure, FSP (Yim et al., 2017).

For two layers' features F1 ``[B, C1, H, W]`` and F2 ``[B, C2, H, W]`` of one
network, the FSP matrix is

    G_ij = sum_{h,w} F1_{i,h,w} * F2_{j,h,w} / (H * W)          G: [B, C1, C2]

and the loss over layer pairs k is

    L_fsp = sum_k mean( (G_S^k - G_T^k)^2 )

The paper sums squared differences over the matrix's entries (and weights
pairs equally); here they are averaged over batch and entries so that the
scale does not grow with the channel counts.

Spatial size: when a pair's two layers differ in size, the larger map is
adaptive-average-pooled to the smaller one (the student's and the teacher's
spatial sizes never need to agree: G has no spatial axes).

Channel mismatch between student and teacher: when ``student_shapes`` and
``teacher_shapes`` (path -> [C, H, W], from the module's dry run) are given and a
student layer's channel count differs from its teacher counterpart's, the term
learns a 1x1 conv regressor for that student layer (one per pair and side) and
builds the student's G from the regressed features. Without shapes the counts
must match, and a mismatch is a one-line error naming the layers.

FSP is a first-stage loss in the paper: ``stage_epochs=N`` keeps it active for
epochs < N (give CE/KD ``start_epoch=N``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .base import LossInputs, LossTerm
from .features import (
    apply_regressor,
    loss_dtype,
    map_shape,
    parse_pairs,
    pool_to_smaller,
    require_teacher,
    student_feature,
    teacher_feature,
)


def fsp_matrix(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """G = F1^T F2 / (H*W) per sample: ``[B, C1, C2]`` (the larger map is pooled first)."""
    f1, f2 = pool_to_smaller(f1, f2)
    hw = f1.shape[-2] * f1.shape[-1]
    return torch.einsum("bihw,bjhw->bij", f1, f2) / hw


class FSPTerm(LossTerm):
    """FSP matrices of ``student_pairs[k]`` against the teacher's ``teacher_pairs[k]``."""

    def __init__(self, name: str, teacher: str | None, student_pairs: Sequence[Sequence[str]],
                 teacher_pairs: Sequence[Sequence[str]],
                 student_shapes: Mapping[str, Sequence[int]] | None = None,
                 teacher_shapes: Mapping[str, Sequence[int]] | None = None,
                 stage_epochs: int | None = None, start_epoch: int = 0) -> None:
        super().__init__(name)
        self.teacher = require_teacher(name, teacher)
        self.student_pairs = parse_pairs(name, "student_pairs", student_pairs)
        self.teacher_pairs = parse_pairs(name, "teacher_pairs", teacher_pairs)
        if len(self.student_pairs) != len(self.teacher_pairs):
            raise ValueError(f"loss term {name!r}: {len(self.student_pairs)} student_pairs but "
                             f"{len(self.teacher_pairs)} teacher_pairs; they are matched in order")
        self.set_epochs(start_epoch, stage_epochs)
        # One regressor per (pair, side), keyed "k_0"/"k_1"; identity where channels already agree.
        self.regressors = nn.ModuleDict()
        if (student_shapes is None) != (teacher_shapes is None):
            raise ValueError(f"loss term {name!r}: give both student_shapes and teacher_shapes, or neither")
        if student_shapes is not None and teacher_shapes is not None:
            for k, (sp, tp) in enumerate(zip(self.student_pairs, self.teacher_pairs, strict=True)):
                for side in (0, 1):
                    cs = map_shape(name, student_shapes, sp[side], "student_shapes", "FSP")[0]
                    ct = map_shape(name, teacher_shapes, tp[side], "teacher_shapes", "FSP")[0]
                    if cs != ct:
                        self.regressors[f"{k}_{side}"] = nn.Conv2d(cs, ct, kernel_size=1)

    def student_hint_paths(self) -> list[str]:
        return list(dict.fromkeys(p for pair in self.student_pairs for p in pair))

    def teacher_hint_paths(self) -> list[tuple[str, str]]:
        return [(self.teacher, p) for p in dict.fromkeys(p for pair in self.teacher_pairs for p in pair)]

    def forward(self, inp: LossInputs) -> torch.Tensor:
        total = 0.0
        for k, (sp, tp) in enumerate(zip(self.student_pairs, self.teacher_pairs, strict=True)):
            s_feats, t_feats = [], []
            for side in (0, 1):
                s = student_feature(self, inp, sp[side])
                t = teacher_feature(self, inp, self.teacher, tp[side])
                if s.dim() != 4 or t.dim() != 4:
                    raise ValueError(f"loss term {self.name!r}: FSP needs [B, C, H, W] maps, got student "
                                     f"{sp[side]!r} {list(s.shape)} / teacher {tp[side]!r} {list(t.shape)}")
                key = f"{k}_{side}"
                if key in self.regressors:
                    reg = self.regressors[key]
                    if s.shape[1] != reg.in_channels:
                        raise ValueError(f"loss term {self.name!r}: student layer {sp[side]!r} has "
                                         f"{s.shape[1]} channels, built for {reg.in_channels}")
                    s = apply_regressor(reg, s)
                s = s.to(loss_dtype(s))
                if s.shape[1] != t.shape[1]:
                    raise ValueError(f"loss term {self.name!r}: student layer {sp[side]!r} has {s.shape[1]} "
                                     f"channels but teacher {self.teacher!r} layer {tp[side]!r} has "
                                     f"{t.shape[1]}; pass student_shapes/teacher_shapes to learn 1x1 "
                                     f"regressors")
                s_feats.append(s)
                t_feats.append(t.detach().to(s.dtype))
            g_s = fsp_matrix(*s_feats)
            g_t = fsp_matrix(*t_feats)
            total = total + (g_s - g_t).pow(2).mean()
        return total
