"""The Lightning callbacks of a training run, built in one place for every worker.

Checkpoints (atomic, epoch ends, best and last kept) and what TensorBoard
shows beyond the module's own ``self.log`` calls: throughput, the
validation analysis (confusion matrix, teacher accuracy, agreement) and the
quantized layers' weights; and the guard that stops (or skips) non-finite steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.data import DatasetMeta
from distill.spec import JobSpec
from distill.train.callbacks import DashboardLayout, NonFiniteGuard, ThroughputCallback
from distill.train.checkpoint import AtomicCheckpoint
from distill.train.quant_stats import QuantStats
from distill.train.val_analysis import TeacherValLogits, ValidationAnalysis


def _teacher_val(ref: Any) -> TeacherValLogits | None:
    """The driver's teacher scores on the validation set (passed through the object store)."""
    if ref is None or isinstance(ref, TeacherValLogits):
        return ref
    import ray

    return ray.get(ref)


def run_callbacks(spec: JobSpec, meta: DatasetMeta, *, ckpt_dir: Path, steps_per_epoch: int, world: int,
                  teacher_val: Any = None) -> list[Any]:
    return [
        AtomicCheckpoint(dirpath=str(ckpt_dir), save_last=True, monitor="val/top1", mode="max", save_top_k=1,
                         filename="best", steps_per_epoch=steps_per_epoch),
        ThroughputCallback(world),
        ValidationAnalysis(meta.num_classes, list(meta.classes), _teacher_val(teacher_val)),
        QuantStats(gather_zero3=spec.trainer.deepspeed_stage == 3),
        DashboardLayout(),
        NonFiniteGuard(spec.trainer.on_nonfinite, [t.label() for t in spec.loss.terms], lr=spec.trainer.lr,
                       precision=spec.trainer.precision),
    ]
