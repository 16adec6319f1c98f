"""Side concerns of a run as Lightning callbacks: teacher-service health, data problems, throughput."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl


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
