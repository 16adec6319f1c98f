"""Side concerns of a run as Lightning callbacks: teacher-service health, data problems, throughput."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import numpy as np


class TeacherStatsCallback(pl.Callback):
    """Logs teacher latency (p50/p95), student wait per step, retries, dead replicas,
    per-teacher throughput and skipped corrupt samples every ``log_every_n_steps``."""

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
        if self.pool is not None:
            stats = self.pool.drain_stats()
            if stats.latencies_s:
                lat = np.array(stats.latencies_s) * 1000
                metrics["teachers/latency_p50_ms"] = float(np.percentile(lat, 50))
                metrics["teachers/latency_p95_ms"] = float(np.percentile(lat, 95))
                metrics["teachers/student_wait_ms_per_step"] = 1000 * stats.wait_s / len(lat)
            metrics["teachers/retries"] = float(stats.retries)
            metrics["teachers/dead_replicas"] = float(stats.dead_replicas)
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
