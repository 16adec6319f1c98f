"""ReviewKD: knowledge review with attention-based fusion and a hierarchical context loss
(Chen et al., 2021).

The student's layers ``student_paths`` (shallow to deep) are matched, in order, to the teacher's
``teacher_paths``. Reviewing runs deep to shallow: level i's student map S_i goes through a 1x1
conv to ``mid`` channels, x_i; for every level but the deepest, an attention-based fusion (ABF)
mixes it with the fused map of the level below, r_{i+1}, resized (nearest) to x_i's size:

    a = sigmoid(conv1x1([x_i, r_{i+1}]))            two maps, [B, 2, H, W]
    r_i = a_0 * x_i + a_1 * r_{i+1}                  (r_i = x_i at the deepest level)
    out_i = conv3x3(r_i)                             to the teacher layer's channel count

and out_i is compared with the teacher's T_i by the hierarchical context loss (HCL), which sums
mean squared errors at the full size and after adaptive average pooling to 4x4, 2x2 and 1x1
(those smaller than the map), with weights 1, 1/2, 1/4, 1/8 in that order, normalized:

    HCL(F, G) = sum_k c_k MSE(P_k F, P_k G) / sum_k c_k,        L_review = sum_i HCL(out_i, T_i)

(the larger of out_i and T_i is first pooled to the other's size). The paper's ABF puts BatchNorm
after its convs; this one has none (it must also run beside BN-free students, and under DeepSpeed
on tiny batches). The shapes (``student_shapes``/``teacher_shapes``, path -> [C, H, W]) come from
the job's dry run, as FSP's do. The paper warms this term up (``warmup_epochs``, every term has it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import LossInputs, LossTerm
from .features import loss_dtype, map_shape, pool_to_smaller, require_teacher, student_feature, teacher_feature

HCL_SIZES = (4, 2, 1)


def hcl(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Hierarchical context loss between two ``[B, C, H, W]`` maps of one channel count."""
    f, g = pool_to_smaller(f, g)
    total, norm, c = F.mse_loss(f, g), 1.0, 1.0
    for size in HCL_SIZES:
        if size >= f.shape[-1] or size >= f.shape[-2]:
            continue
        c /= 2
        total = total + c * F.mse_loss(F.adaptive_avg_pool2d(f, size), F.adaptive_avg_pool2d(g, size))
        norm += c
    return total / norm


class ABF(nn.Module):
    """One review level: 1x1 to ``mid``, attention fusion with the deeper level, 3x3 to the teacher's width."""

    def __init__(self, in_chs: int, mid: int, out_chs: int, fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.att = nn.Conv2d(2 * mid, 2, 1) if fuse else None
        self.out = nn.Conv2d(mid, out_chs, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        if self.att is not None and deeper is not None:
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            a = torch.sigmoid(self.att(torch.cat([x, deeper], dim=1)))
            x = a[:, :1] * x + a[:, 1:] * deeper
        return x, self.out(x)


class ReviewKDTerm(LossTerm):
    """Knowledge review from one teacher over matched lists of student and teacher layers."""

    def __init__(self, name: str, teacher: str | None, student_paths: Sequence[str], teacher_paths: Sequence[str],
                 student_shapes: Mapping[str, Sequence[int]] | None = None,
                 teacher_shapes: Mapping[str, Sequence[int]] | None = None, mid: int = 64,
                 start_epoch: int = 0) -> None:
        super().__init__(name)
        self.teacher = require_teacher(name, teacher)
        for field, paths in (("student_paths", student_paths), ("teacher_paths", teacher_paths)):
            if isinstance(paths, str) or not paths:
                raise ValueError(f"loss term {name!r}: {field} must be a non-empty list of layer paths")
        self.student_paths, self.teacher_paths = [str(p) for p in student_paths], [str(p) for p in teacher_paths]
        if len(self.student_paths) != len(self.teacher_paths):
            raise ValueError(f"loss term {name!r}: {len(self.student_paths)} student_paths but "
                             f"{len(self.teacher_paths)} teacher_paths; they are matched in order")
        if mid < 1:
            raise ValueError(f"loss term {name!r}: mid must be >= 1, got {mid}")
        self.set_epochs(start_epoch)
        self.levels = nn.ModuleList()
        if student_shapes is not None and teacher_shapes is not None:
            for i, (sp, tp) in enumerate(zip(self.student_paths, self.teacher_paths, strict=True)):
                cs = map_shape(name, student_shapes, sp, "student_shapes", "ReviewKD")[0]
                ct = map_shape(name, teacher_shapes, tp, "teacher_shapes", "ReviewKD")[0]
                self.levels.append(ABF(cs, mid, ct, fuse=i < len(self.student_paths) - 1))

    def student_hint_paths(self) -> list[str]:
        return list(dict.fromkeys(self.student_paths))

    def teacher_hint_paths(self) -> list[tuple[str, str]]:
        return [(self.teacher, p) for p in dict.fromkeys(self.teacher_paths)]

    def forward(self, inp: LossInputs) -> torch.Tensor:
        if not self.levels:
            raise ValueError(f"loss term {self.name!r}: ReviewKD needs student_shapes and teacher_shapes "
                             f"(the job's dry run fills them)")
        total, deeper = 0.0, None
        for i in reversed(range(len(self.levels))):
            s = student_feature(self, inp, self.student_paths[i])
            t = teacher_feature(self, inp, self.teacher, self.teacher_paths[i])
            dtype = loss_dtype(s)
            level = self.levels[i]
            param_dtype = level.reduce.weight.dtype
            deeper, out = level(s.to(param_dtype), deeper)
            total = total + hcl(out.to(dtype), t.detach().to(dtype))
        return total
