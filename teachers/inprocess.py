"""Teachers inside the training step: the way torchdistill and mdistiller run them.

``teachers.mode: inprocess`` loads every teacher in each training worker and runs
them synchronously on each batch before the student's step, with the same
``TeacherWorker`` body (loading, hint capture, fp16/top-k encoding) the Ray actors
use, so the answers equal what an online run would be sent. It needs no actors
and no spare cores, but the student waits for every teacher forward: it is the
baseline the Ray-served and offline modes are measured against
(``benchmarks.teacher_modes``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .client import TeacherOutput
from .service import TeacherConfig, TeacherWorker, decode_logits


class InProcessTeachers:
    """Iterates ``(batch, TeacherOutput)``, each teacher run here on the batch's inputs."""

    def __init__(self, loader: Iterable, configs: list[TeacherConfig], length: int | None = None) -> None:
        threads = torch.get_num_threads()
        self.workers = [TeacherWorker(c) for c in configs]
        torch.set_num_threads(threads)  # a TeacherWorker sets its own thread count; keep the trainer's
        self.loader = loader
        self.length = length
        self.wait_s = 0.0  # time the student spent waiting for teachers (all of their compute)
        self._drained = (0.0, 0)  # (wait_s, batches) at the last drain_stats
        self.batches = 0

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("length unknown")
        return self.length

    def __iter__(self) -> Iterator[tuple[Any, TeacherOutput]]:
        for batch in self.loader:
            start = time.perf_counter()
            x = np.ascontiguousarray(batch[0].numpy())
            answers = [w.infer(x) for w in self.workers]
            out = TeacherOutput([decode_logits(a) for a in answers],
                                [{k: torch.from_numpy(v) for k, v in a["hints"].items()} for a in answers])
            self.wait_s += time.perf_counter() - start
            self.batches += 1
            yield batch, out

    def drain_stats(self) -> _WaitStats:
        """Student wait per step since the last call, as ``TeacherStatsCallback`` logs a pool's."""
        wait, batches = self.wait_s - self._drained[0], self.batches - self._drained[1]
        self._drained = (self.wait_s, self.batches)
        return _WaitStats(1000 * wait / max(1, batches))


@dataclass
class _WaitStats:
    wait_ms_per_step: float

    def metrics(self) -> dict[str, float]:
        return {"teachers/student_wait_ms_per_step": self.wait_ms_per_step}
