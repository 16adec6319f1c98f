"""Small helpers shared by the feature terms (FitNets hints, attention transfer, FSP).

Feature terms compare intermediate maps, so they share three chores: reading a
shape from the spec (YAML gives lists), fetching one teacher's feature with an
error that says what to fix, and bringing two maps to one spatial size.
Spatial mismatch is always resolved by adaptive average pooling of the larger
map down to the smaller one: pooling never invents detail the smaller network
did not compute, and it is linear, so it commutes with a 1x1 regressor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from .base import LossInputs, LossTerm


def parse_shape(term: str, field: str, value: Sequence[int]) -> tuple[int, ...]:
    """A feature shape without the batch dimension: ``(C, H, W)`` for maps or ``(C,)`` for vectors."""
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"loss term {term!r}: {field} must be a list of ints like [C, H, W], "
                         f"got {value!r}") from None
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(f"loss term {term!r}: {field} must be [C, H, W] or [C] with positive sizes, "
                         f"got {list(shape)}")
    return shape


def map_shape(term: str, shapes: Mapping[str, Sequence[int]], path: str, field: str, method: str) -> tuple[int, ...]:
    """``shapes[path]`` as a ``(C, H, W)`` map shape, or a one-line error naming the term and field."""
    if path not in shapes:
        raise ValueError(f"loss term {term!r}: {field} has no entry for {path!r}")
    shape = parse_shape(term, f"{field}[{path!r}]", shapes[path])
    if len(shape) != 3:
        raise ValueError(f"loss term {term!r}: {method} needs [C, H, W] maps, {field}[{path!r}] is {list(shape)}")
    return shape


def require_teacher(term: str, teacher: str | None) -> str:
    """Feature terms compare with one named teacher: hint layers of different teachers have
    different shapes and meanings, so there is no ensemble feature to compare with."""
    if not teacher:
        raise ValueError(f"loss term {term!r}: feature terms need `teacher: <name>` (one term per "
                         f"teacher); the combined ensemble has no features")
    return teacher


def parse_pairs(term: str, field: str, value: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """A spec's ``[[a, b], ...]`` list of layer pairs, or a one-line error naming the field."""
    if isinstance(value, str) or not value or any(isinstance(x, str) or len(x) != 2 for x in value):
        raise ValueError(f"loss term {term!r}: {field} must be a non-empty list of [path_a, path_b], "
                         f"got {value!r}")
    return [(str(a), str(b)) for a, b in value]


def as_vectors(x: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` embeddings: maps ``[B, C, H, W]`` are globally average-pooled, vectors pass."""
    return x.mean(dim=(2, 3)) if x.dim() == 4 else x.flatten(1)


class FeaturePairsTerm(LossTerm):
    """A term over ``pairs = [[student_path, teacher_path], ...]`` of one teacher: the sum over the
    pairs of ``pair_loss(student_feature, teacher_feature)`` (the teacher's detached, both in the
    loss dtype). Relation terms (RKD, PKT, SP) and NST are this shape."""

    def __init__(self, name: str, teacher: str | None, pairs: Sequence[Sequence[str]], start_epoch: int = 0,
                 stage_epochs: int | None = None) -> None:
        super().__init__(name)
        self.teacher = require_teacher(name, teacher)
        self.pairs = parse_pairs(name, "pairs", pairs)
        self.set_epochs(start_epoch, stage_epochs)

    def student_hint_paths(self) -> list[str]:
        return list(dict.fromkeys(s for s, _ in self.pairs))

    def teacher_hint_paths(self) -> list[tuple[str, str]]:
        return [(self.teacher, t) for t in dict.fromkeys(t for _, t in self.pairs)]

    def pair_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, inp: LossInputs) -> torch.Tensor:
        total = 0.0
        for s_path, t_path in self.pairs:
            s = student_feature(self, inp, s_path)
            t = teacher_feature(self, inp, self.teacher, t_path)
            dtype = loss_dtype(s)
            total = total + self.pair_loss(s.to(dtype), t.detach().to(dtype))
        return total


def teacher_feature(term: LossTerm, inp: LossInputs, teacher: str, path: str) -> torch.Tensor:
    """The teacher's feature at ``path``, with a one-line error when it was not captured."""
    i = term.teacher_index(inp, teacher)
    feats = inp.teacher_feats[i] if i < len(inp.teacher_feats) else {}
    if path not in feats:
        raise ValueError(f"loss term {term.name!r}: teacher {teacher!r} returned no hint {path!r} "
                         f"(it returned {sorted(feats)}); add it to the teacher's hints")
    return feats[path]


def student_feature(term: LossTerm, inp: LossInputs, path: str) -> torch.Tensor:
    """The student's feature at ``path``, with a one-line error when it was not captured."""
    if path not in inp.student_feats:
        raise ValueError(f"loss term {term.name!r}: student feature {path!r} was not captured "
                         f"(captured: {sorted(inp.student_feats)})")
    return inp.student_feats[path]


def pool_to_smaller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool whichever of two ``[B, C, H, W]`` maps is larger to the other's size.

    When neither is larger in both dimensions (e.g. 8x4 against 4x8), both are
    pooled to the elementwise minimum.
    """
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if a.shape[-2:] != size:
        a = F.adaptive_avg_pool2d(a, size)
    if b.shape[-2:] != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def loss_dtype(t: torch.Tensor) -> torch.dtype:
    """Losses run in at least fp32 (student features may be bf16/fp16), float64 stays float64."""
    return torch.promote_types(t.dtype, torch.float32)


def apply_regressor(regressor: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a regressor in its parameters' dtype (DeepSpeed bf16/fp16 casts them), return loss dtype."""
    param = next(regressor.parameters(), None)
    out = regressor(x if param is None else x.to(param.dtype))
    return out.to(loss_dtype(x))
