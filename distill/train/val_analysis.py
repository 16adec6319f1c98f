"""What each validation shows beyond the student's accuracy.

- The teachers' accuracy on the very same validation images (each teacher and
  the combined ensemble): the line the student is chasing, in the same plot.
  Teachers are fixed, so the driver scores them once (``TeacherValLogits``)
  and the workers only compare.
- Student-teacher agreement: how often the student's top-1 equals the
  ensemble's, and KL(ensemble || student) at temperature 1. Accuracy can rise
  while the student drifts from its teachers; these show whether it learns
  *from* them.
- A confusion matrix image, to see which classes the student mixes up.

All ranks score the whole validation set; rank 0 alone does this work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F

from teachers.ensemble import combine_probs


@dataclass
class TeacherValLogits:
    """Every teacher's logits on the validation set, rows keyed by sample key."""

    keys: list[str]
    names: list[str]
    logits: list[np.ndarray]  # one float32 [N, C] per teacher, in ``names`` order
    weights: list[float]
    combine: str

    def rows(self, keys: list[str]) -> tuple[list[int], list[int]]:
        """(positions in ``keys`` that the teachers scored, their rows here)."""
        index = {k: i for i, k in enumerate(self.keys)}
        found = [(j, index[k]) for j, k in enumerate(keys) if k in index]
        return [j for j, _ in found], [i for _, i in found]


def score_teachers(batches: Any, infer: Any, names: list[str], weights: list[float],
                   combine: str) -> TeacherValLogits:
    """Run ``infer(x) -> [logits per teacher]`` over validation ``batches`` of (x, y, keys)."""
    keys: list[str] = []
    parts: list[list[torch.Tensor]] = [[] for _ in names]
    for x, _y, k in batches:
        keys.extend(list(k))
        for part, z in zip(parts, infer(x), strict=True):
            part.append(z.float().cpu())
    return TeacherValLogits(keys, list(names), [torch.cat(p).numpy() for p in parts], list(weights), combine)


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, C]`` counts, rows the true class, columns the prediction."""
    flat = targets.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_figure(cm: torch.Tensor, class_names: list[str], title: str) -> Any:
    """A matplotlib figure of the row-normalized matrix, counts written in the cells when few classes."""
    from matplotlib.figure import Figure

    n = cm.shape[0]
    rates = (cm.float() / cm.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    size = min(12.0, 2.0 + 0.45 * n)
    fig = Figure(figsize=(size, size), dpi=80)
    ax = fig.add_subplot()
    ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    if n <= 30:
        ax.set_xticks(range(n), labels=class_names, rotation=90 if n > 10 else 0)
        ax.set_yticks(range(n), labels=class_names)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def agreement(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> tuple[float, float]:
    """(top-1 match rate, KL(teacher || student) averaged over samples) at temperature 1."""
    match = (student_logits.argmax(1) == teacher_probs.argmax(1)).float().mean().item()
    kl = F.kl_div(F.log_softmax(student_logits, dim=1), teacher_probs, reduction="batchmean").item()
    return match, kl


class ValidationAnalysis(pl.Callback):
    """Confusion matrix, teacher accuracy and student-teacher agreement at every validation."""

    def __init__(self, num_classes: int, class_names: list[str], teachers: TeacherValLogits | None) -> None:
        self.num_classes = num_classes
        self.class_names = class_names
        self.teachers = teachers
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._keys: list[str] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._logits, self._targets, self._keys = [], [], []

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.is_global_zero or not isinstance(outputs, torch.Tensor):
            return
        _x, y, keys = batch
        self._logits.append(outputs.float().cpu())
        self._targets.append(torch.as_tensor(y).cpu())
        self._keys.extend(list(keys))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (trainer.is_global_zero and self._logits and trainer.logger) or trainer.sanity_checking:
            return
        logits, targets = torch.cat(self._logits), torch.cat(self._targets)
        step = trainer.global_step
        cm = confusion_matrix(logits.argmax(1), targets, self.num_classes)
        fig = confusion_figure(cm, self.class_names, f"student, step {step}")
        trainer.logger.experiment.add_figure("val/confusion_matrix", fig, step, close=False)
        if self.teachers is not None:
            trainer.logger.log_metrics(self._teacher_metrics(logits, targets), step=step)

    def _teacher_metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        t = self.teachers
        assert t is not None
        mine, rows = t.rows(self._keys)
        if not rows:
            return {}
        logits, targets = logits[mine], targets[mine]
        per_teacher = [torch.from_numpy(z[rows]) for z in t.logits]
        probs = combine_probs(per_teacher, t.weights, 1.0, t.combine)
        metrics = {f"val/teacher_{name}_top1": (z.argmax(1) == targets).float().mean().item()
                   for name, z in zip(t.names, per_teacher, strict=True)}
        metrics["val/ensemble_top1"] = (probs.argmax(1) == targets).float().mean().item()
        metrics["val/agreement_top1"], metrics["val/kl_teacher_student"] = agreement(logits, probs)
        return metrics
