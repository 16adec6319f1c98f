"""FitNets hints (Romero et al., 2015).

    L_hint = 1/2 * mean( (u_T - r(u_S))^2 )

u_S is the student's guided layer, u_T the teacher's hint layer, r a learned
regressor. The paper writes 1/2 ||u_T - r(u_S)||^2 summed over a sample's
elements; here the squared error is averaged over batch *and* elements, so the
term's scale does not change with the layer's size and one weight in the spec
works across layers. (Multiply by the element count C*H*W to get the paper's
per-sample sum.)

The regressor: a 1x1 conv (C_S -> C_T) for maps, a linear layer for vectors,
when the channel counts differ; the identity when they are equal. The paper
uses a wider conv whose output size matches the teacher's; here a spatial
mismatch is handled by adaptive average pooling of the larger map down to the
smaller one (``features.pool_to_smaller``), before the regressor when the
student is larger (cheaper; pooling and a 1x1 conv commute).

Two-stage schedule: ``stage_epochs=N`` makes the term active only for epochs
< N; give the KD and CE terms ``start_epoch=N`` so the second stage trains
the whole student on KD after the hint stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import LossInputs, LossTerm
from .features import (
    apply_regressor,
    loss_dtype,
    parse_shape,
    pool_to_smaller,
    require_teacher,
    student_feature,
    teacher_feature,
)


class FitNetsTerm(LossTerm):
    """FitNets hint: the student's ``student_path`` regresses the teacher's ``teacher_path``."""

    def __init__(self, name: str, student_path: str, teacher: str | None, teacher_path: str,
                 student_shape: Sequence[int], teacher_shape: Sequence[int],
                 stage_epochs: int | None = None, start_epoch: int = 0) -> None:
        super().__init__(name)
        self.student_path = student_path
        self.teacher = require_teacher(name, teacher)
        self.teacher_path = teacher_path
        self.student_shape = parse_shape(name, "student_shape", student_shape)
        self.teacher_shape = parse_shape(name, "teacher_shape", teacher_shape)
        if len(self.student_shape) != len(self.teacher_shape):
            raise ValueError(f"loss term {name!r}: student_shape {list(self.student_shape)} and "
                             f"teacher_shape {list(self.teacher_shape)} must both be maps [C, H, W] "
                             f"or both vectors [C]")
        self.set_epochs(start_epoch, stage_epochs)
        cs, ct = self.student_shape[0], self.teacher_shape[0]
        if cs == ct:
            self.regressor: nn.Module = nn.Identity()
        elif len(self.student_shape) == 3:
            self.regressor = nn.Conv2d(cs, ct, kernel_size=1)
        else:
            self.regressor = nn.Linear(cs, ct)

    def student_hint_paths(self) -> list[str]:
        return [self.student_path]

    def teacher_hint_paths(self) -> list[tuple[str, str]]:
        return [(self.teacher, self.teacher_path)]

    def forward(self, inp: LossInputs) -> torch.Tensor:
        s = student_feature(self, inp, self.student_path)
        t = teacher_feature(self, inp, self.teacher, self.teacher_path)
        want = (len(self.student_shape) + 1, self.student_shape[0], len(self.teacher_shape) + 1,
                self.teacher_shape[0])
        if (s.dim(), s.shape[1], t.dim(), t.shape[1]) != want:
            raise ValueError(f"loss term {self.name!r}: got student {list(s.shape[1:])} / teacher "
                             f"{list(t.shape[1:])} features, built for {list(self.student_shape)} / "
                             f"{list(self.teacher_shape)}")
        t = t.detach().to(loss_dtype(s))
        if s.dim() == 4:
            s, t = pool_to_smaller(s, t)
        return 0.5 * (t - apply_regressor(self.regressor, s)).pow(2).mean()
