"""Side concerns of a run as Lightning callbacks: teacher-service health, data problems, throughput,
non-finite losses and gradients."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch

from distill.errors import RunFailed


class TeacherStatsCallback(pl.Callback):
    """Logs the teacher service's health every ``log_every_n_steps``: latency (p50/p95), student wait
    per step, window occupancy, retries, replica failures, restarts, replicas down, samples/s and
    busy fraction per replica; and skipped corrupt samples."""

    def __init__(self, pool: Any | None, corrupt_counter: Any | None = None) -> None:
        self.pool = pool
        self.counter = corrupt_counter

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if (trainer.global_step % trainer.log_every_n_steps) != 0:
            return
        metrics: dict[str, float] = {}
        if self.counter is not None:
            metrics["data/corrupt_skipped"] = float(self.counter.count)
        if self.pool is not None:  # the pool names its own scalars (teachers.client.PoolStats.metrics)
            metrics.update(self.pool.drain_stats().metrics())
        if metrics and trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=trainer.global_step)


class ThroughputCallback(pl.Callback):
    """Logs ``train/samples_per_s`` over all workers every ``log_every_n_steps``.

    Timed from one batch's end to the next, so data loading, waiting for the
    teachers, the step and its all-reduce all count: what a user pays per
    sample. The first batch of each epoch is left out (it includes the
    validation and loader start that came before it). Ranks run in lock-step
    with equal batches, so rank 0's rate times the world size is the total.
    """

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._last: float | None = None
        self._samples = 0
        self._seconds = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._last, self._samples, self._seconds = None, 0, 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last is not None:
            (x, *_), _teacher = batch
            self._samples += len(x)
            self._seconds += now - self._last
        self._last = now
        if trainer.global_step % trainer.log_every_n_steps == 0 and self._seconds > 0 and trainer.logger:
            rate = self.world_size * self._samples / self._seconds
            trainer.logger.log_metrics({"train/samples_per_s": rate}, step=trainer.global_step)
            self._samples, self._seconds = 0, 0.0


class NonFiniteError(RunFailed):
    """Training produced a non-finite loss or gradient; the message is one line naming step and term."""


class NonFiniteGuard(pl.Callback):
    """Stops (or, with ``trainer.on_nonfinite: skip``, skips and counts) steps whose loss or gradients
    are not finite.

    Without it a diverged run ends "successfully" with chance accuracy: DeepSpeed's ZeRO optimizers
    quietly skip every step whose gradients overflow, and stage 0 applies NaN gradients. Each loss term
    is checked (the module logs them, averaged over ranks, as ``loss/<term>``), and the gradients
    through DeepSpeed's own overflow check (``was_step_applied``), or, where the optimizer has none
    (stage 0), directly before the step. Every decision is reduced over ranks so all of them stop, or
    skip, at the same step. Stopping raises ``NonFiniteError`` before the epoch-end checkpoint, so
    the last checkpoint on disk is the last good one.
    """

    def __init__(self, policy: str, terms: list[str], *, lr: float, precision: str) -> None:
        self.policy, self.terms, self.lr, self.precision = policy, terms, lr, precision
        self.skipped = 0
        self._grads_bad = False

    def _cause(self, what: str) -> str:
        if self.precision == "16":
            return "fp16 overflow: train in bf16 or 32"
        if what.startswith("loss term") and self.terms and not what.endswith("'total'"):
            return f"lower trainer.lr (now {self.lr:g}), or check that term's inputs (teacher outputs, hints)"
        return f"lower trainer.lr (now {self.lr:g}) or set trainer.grad_clip"

    def _fail(self, trainer: pl.Trainer, what: str) -> None:
        raise NonFiniteError(f"step {trainer.global_step}: {what} is not finite (likely cause: "
                             f"{self._cause(what)})")

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer: Any) -> None:
        """Stage 0 (no DeepSpeed overflow check): look at the gradients themselves."""
        self._grads_bad = False
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        if engine is not None and hasattr(engine.optimizer, "overflow"):
            return  # DeepSpeed checks them, over all ranks, and skips the step itself
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        local = bool(grads) and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        self._grads_bad = bool(trainer.strategy.reduce_boolean_decision(local, all=False))
        if self._grads_bad and self.policy == "skip":
            for p in module.parameters():
                p.grad = None  # the optimizer leaves parameters without gradients untouched

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bad = [t for t in [*self.terms, "total"] if not _finite(trainer.callback_metrics.get(f"loss/{t}"))]
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        overflow = (engine is not None and self.precision != "16" and not engine.was_step_applied()) or self._grads_bad
        if not trainer.strategy.reduce_boolean_decision(bool(bad) or overflow, all=False):
            return
        if self.policy == "stop":
            self._fail(trainer, f"loss term {bad[0]!r}" if bad else "the gradient")
        self.skipped += 1
        if trainer.logger is not None:
            trainer.logger.log_metrics({"train/nonfinite_skipped": float(self.skipped)}, step=trainer.global_step)


def _finite(value: Any) -> bool:
    """A logged metric is finite (an absent one, e.g. an inactive term, counts as finite)."""
    return value is None or bool(torch.isfinite(torch.as_tensor(value, dtype=torch.float64)).all())


# What a user watches first, as TensorBoard's custom-scalars layout (tags are regular expressions).
DASHBOARD = {
    "distill": {
        "validation top-1: student, each teacher, ensemble": [
            "Multiline", [r"^val/top1$", r"^val/teacher_.+_top1$", r"^val/ensemble_top1$"]],
        "loss terms (per step)": ["Multiline", [r"^loss/.+_step$"]],
        "teacher service: student wait and latency (ms)": [
            "Multiline", [r"^teachers/student_wait_ms_per_step$", r"^teachers/latency_p(50|95)_ms$"]],
    },
}


class DashboardLayout(pl.Callback):
    """Writes ``DASHBOARD`` into the run's TensorBoard events once (rank 0): the Custom Scalars tab
    then opens on student-vs-teachers accuracy, the loss terms and the teacher service's health
    instead of the alphabetical list of every scalar."""

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.is_global_zero and trainer.logger is not None:
            trainer.logger.experiment.add_custom_scalars(DASHBOARD)
