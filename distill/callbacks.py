"""Side concerns of a run as Lightning callbacks: teacher-service health and data problems."""

from __future__ import annotations

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
