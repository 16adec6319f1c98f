"""What every loss term sees, and the small contract each term follows.

A term is an ``nn.Module`` whose ``forward`` takes one :class:`LossInputs` and
returns a scalar tensor. Keeping all inputs in one record means the
LightningModule computes student features and teacher outputs once per step and
every term picks what it needs, instead of each term re-running forwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LossInputs:
    """Everything a loss term may read for one batch.

    ``targets`` are class indices ``[B]`` or, after mixup/cutmix, probabilities
    ``[B, C]``. ``teacher_logits`` holds one fp32 ``[B, C]`` tensor per teacher in
    spec order (empty when training on hard labels alone); ``ensemble_probs`` is
    the combined ensemble target at each KD term's temperature, filled by the
    module. Features are keyed by module path.
    """

    student_logits: torch.Tensor
    targets: torch.Tensor
    teacher_logits: list[torch.Tensor] = field(default_factory=list)
    teacher_names: list[str] = field(default_factory=list)
    teacher_weights: list[float] = field(default_factory=list)
    student_feats: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_feats: list[dict[str, torch.Tensor]] = field(default_factory=list)
    epoch: int = 0


class LossTerm(nn.Module):
    """Base class: a named, weighted term. Subclasses set ``needs_teacher`` and
    list the student/teacher feature paths they read so the module can hook them."""

    needs_teacher: bool = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def student_hint_paths(self) -> list[str]:
        return []

    def teacher_hint_paths(self) -> list[tuple[str, str]]:
        """(teacher name, module path) pairs this term needs from the teachers."""
        return []

    def active(self, epoch: int) -> bool:
        """Whether the term contributes at ``epoch`` (FitNets' two-stage schedule uses this)."""
        return True
