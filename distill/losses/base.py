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
    spec order (empty when training on hard labels alone), ``teacher_names`` and
    ``teacher_weights`` in the same order (empty weights mean equal weights).
    Ensemble-target terms (KD, DKD with ``teacher: null``) combine the logits
    themselves at their own temperature with ``teachers.ensemble.combine_probs``.
    Features are keyed by module path: ``student_feats[path]`` and
    ``teacher_feats[i][path]`` for teacher ``i``; ``epoch`` is 0-based. ``progress`` is the
    training time in epochs at the end of this step (``epoch + (step_in_epoch + 1) / steps_per_epoch``);
    None means "the end of ``epoch``", which is what a caller without steps gets.
    """

    student_logits: torch.Tensor
    targets: torch.Tensor
    teacher_logits: list[torch.Tensor] = field(default_factory=list)
    teacher_names: list[str] = field(default_factory=list)
    teacher_weights: list[float] = field(default_factory=list)
    student_feats: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_feats: list[dict[str, torch.Tensor]] = field(default_factory=list)
    epoch: int = 0
    progress: float | None = None


class LossTerm(nn.Module):
    """Base class: a named, weighted term. Subclasses set ``needs_teacher`` and
    list the student/teacher feature paths they read so the module can hook them.

    Every term contributes for epochs in ``[start_epoch, stop_epoch)``; the
    defaults (0, None) mean always. FitNets' two-stage schedule is a hint term
    with ``stop_epoch = N`` next to KD/CE terms with ``start_epoch = N``.

    Warm-up (every term, the ``warmup_epochs`` option ``build_term`` takes for any type):
    the term's value is multiplied by

        w = min(1, (progress - start_epoch) / warmup_epochs)        (w = 1 when warmup_epochs = 0)

    a linear ramp over the first ``warmup_epochs`` epochs the term is active, step by step when
    the module passes ``progress`` (DKD's paper ramps its term over 20 epochs; a distillation
    term whose gradients dwarf the hard labels' at init can be ramped the same way).
    """

    needs_teacher: bool = True
    start_epoch: int = 0
    stop_epoch: int | None = None
    warmup_epochs: float = 0.0

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
        return epoch >= self.start_epoch and (self.stop_epoch is None or epoch < self.stop_epoch)

    def set_epochs(self, start_epoch: int = 0, stop_epoch: int | None = None) -> None:
        """Set the epoch window, with a one-line error naming the term when it is empty or negative."""
        if int(start_epoch) < 0:
            raise ValueError(f"loss term {self.name!r}: start_epoch must be >= 0, got {start_epoch}")
        if stop_epoch is not None and int(stop_epoch) <= int(start_epoch):
            raise ValueError(f"loss term {self.name!r}: the term would never be active "
                             f"(start_epoch={start_epoch}, stop epoch={stop_epoch})")
        self.start_epoch = int(start_epoch)
        self.stop_epoch = None if stop_epoch is None else int(stop_epoch)

    def set_warmup(self, warmup_epochs: float = 0.0) -> None:
        if not float(warmup_epochs) >= 0:
            raise ValueError(f"loss term {self.name!r}: warmup_epochs must be >= 0, got {warmup_epochs}")
        self.warmup_epochs = float(warmup_epochs)

    def warmup(self, inp: LossInputs) -> float:
        """The warm-up factor w at this step (see the class docstring)."""
        if self.warmup_epochs == 0:
            return 1.0
        progress = inp.epoch + 1.0 if inp.progress is None else float(inp.progress)
        return max(0.0, min(1.0, (progress - self.start_epoch) / self.warmup_epochs))

    def __call__(self, inp: LossInputs) -> torch.Tensor:
        value = super().__call__(inp)
        return value if self.warmup_epochs == 0 else value * self.warmup(inp)

    def teacher_index(self, inp: LossInputs, teacher: str) -> int:
        """Position of ``teacher`` in ``inp.teacher_names``, or a one-line error naming this term."""
        try:
            return inp.teacher_names.index(teacher)
        except ValueError:
            raise ValueError(f"loss term {self.name!r}: teacher {teacher!r} is not in this batch's "
                             f"teachers {inp.teacher_names}") from None
