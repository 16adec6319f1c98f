"""A teacher replica that many jobs share: one queue per job, batches formed across jobs.

Ray runs an actor's calls in arrival order. On a replica that several jobs
use, a job keeping a deep window (or many workers) would then put every other
job's request behind its own. Here each call is parked in its job's queue and
one thread forms the batches: it takes requests round robin over the jobs
(one request per job per pass, the first job rotating from batch to batch), so
a job waits for at most one request of each other job per batch, whatever
their windows. Requests that arrive together (within ``max_wait_s`` of the
oldest) are run as one forward of up to ``max_batch`` samples, so two small
students pay one full teacher pass instead of two half-empty ones; each
request gets back exactly its own rows. ``max_batch`` 0 turns cross-request
batching off (one request per forward, still in fair order).

Requests are never split: one larger than ``max_batch`` runs alone.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .service import TeacherConfig, TeacherWorker

ROW_FIELDS = ("logits", "topk_values", "topk_indices")  # per-sample arrays in an answer (hints too)


@dataclass(eq=False)
class Pending:
    """One call waiting for its rows: who sent it, the input, when it came, and how to answer it."""

    job: str
    x: np.ndarray
    arrived: float
    reply: Callable[[Any], None]


class FairQueue:
    """Requests per job; ``take`` forms the next batch round robin over the jobs (thread-safe)."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Pending]] = {}
        self._order: list[str] = []  # jobs with queued requests, in the order they first queued
        self._next = 0
        self._cond = threading.Condition()

    def put(self, item: Pending) -> None:
        with self._cond:
            if item.job not in self._queues or not self._queues[item.job]:
                self._queues[item.job] = deque()
                self._order.append(item.job)
            self._queues[item.job].append(item)
            self._cond.notify()

    def depth(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def _samples(self) -> int:
        return sum(len(p.x) for q in self._queues.values() for p in q)

    def _oldest(self) -> float:
        return min(q[0].arrived for q in self._queues.values() if q)

    def take(self, max_batch: int, max_wait_s: float, stop: threading.Event | None = None) -> list[Pending]:
        """The next batch; blocks until a request is queued (``[]`` once ``stop`` is set). While fewer
        than ``max_batch`` samples are queued it waits for more, up to ``max_wait_s`` after the oldest
        request arrived: requests that queued while the replica was busy go at once."""
        with self._cond:
            while not self._order:
                if stop is not None and stop.is_set():
                    return []
                self._cond.wait(0.1)
            while max_batch > 0 and self._samples() < max_batch:
                left = self._oldest() + max_wait_s - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._round_robin(max_batch)

    def _round_robin(self, max_batch: int) -> list[Pending]:
        start = self._next % len(self._order)
        jobs = self._order[start:] + self._order[:start]
        batch: list[Pending] = []
        size = 0
        full = False
        while not full and any(self._queues[j] for j in jobs):
            for job in jobs:
                queue = self._queues[job]
                if not queue:
                    continue
                n = len(queue[0].x)
                if batch and (max_batch <= 0 or size + n > max_batch):
                    full = True
                    break
                batch.append(queue.popleft())
                size += n
            full = full or max_batch <= 0
        self._next = start + 1
        self._order = [j for j in self._order if self._queues[j]]
        for job in [j for j, q in self._queues.items() if not q]:
            del self._queues[job]
        return batch


def split_answer(out: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    """Cut one batch's answer into each request's rows; ``latency_s`` becomes each one's share of the
    compute (so summed busy time stays true), ``batch_s`` the whole pass."""
    if len(sizes) == 1:
        return [{**out, "batch_s": out["latency_s"], "batch_size": sizes[0]}]
    total = sum(sizes)
    answers, at = [], 0
    for n in sizes:
        part = {k: (v[at:at + n] if k in ROW_FIELDS else v) for k, v in out.items() if k != "hints"}
        part["hints"] = {k: v[at:at + n] for k, v in out["hints"].items()}
        part.update(latency_s=out["latency_s"] * n / total, batch_s=out["latency_s"], batch_size=total)
        answers.append(part)
        at += n
    return answers


class SharedTeacher:
    """Body of a service replica (an async Ray actor): ``infer(x, job)`` parks the call in the fair
    queue and awaits its rows; one thread runs the batches through a ``TeacherWorker``.

    The event loop only queues and answers, so ``stats`` and ``pid`` reply at once even while a
    forward runs (the controller polls them to see load), and any number of calls may be
    outstanding: no ``max_ongoing_requests`` cap throttles a client's window.
    """

    def __init__(self, config: TeacherConfig, max_batch: int = 0, max_wait_s: float = 0.0) -> None:
        self.worker = TeacherWorker(config)
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.queue = FairQueue()
        self.jobs: dict[str, list[int]] = {}  # job -> [requests, samples] answered
        self.batches = 0
        self.running = 0  # samples in the forward under way
        self._stop = threading.Event()
        threading.Thread(target=self._serve, name="teacher-batches", daemon=True).start()

    async def infer(self, x: np.ndarray, job: str = "") -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def reply(answer: Any) -> None:
            loop.call_soon_threadsafe(_settle, future, answer)

        self.queue.put(Pending(job, np.asarray(x), time.perf_counter(), reply))
        return await future

    def _serve(self) -> None:
        import torch

        torch.set_num_threads(max(1, self.worker.config.threads))  # this thread runs the forwards
        while not self._stop.is_set():
            batch = self.queue.take(self.max_batch, self.max_wait_s, self._stop)
            if not batch:
                continue
            sizes = [len(p.x) for p in batch]
            x = batch[0].x if len(batch) == 1 else np.concatenate([p.x for p in batch])
            self.running = len(x)
            try:
                answers: list[Any] = split_answer(self.worker.infer(x), sizes)
            except Exception as exc:  # noqa: BLE001 - each caller gets the teacher's error
                answers = [exc] * len(batch)
            self.running = 0
            self.batches += 1
            now = time.perf_counter()
            for p, answer in zip(batch, answers, strict=True):
                if isinstance(answer, dict):
                    answer["queued_s"] = now - p.arrived - answer["batch_s"]
                    counts = self.jobs.setdefault(p.job, [0, 0])
                    counts[0] += 1
                    counts[1] += len(p.x)
                p.reply(answer)

    def stats(self) -> dict[str, Any]:
        """Counters since start: samples served, compute seconds, batches, queue depth, per job."""
        return {**self.worker.stats(), "batches": self.batches, "queued": self.queue.depth(),
                "running": self.running, "jobs": {j: list(c) for j, c in self.jobs.items()}}

    def pid(self) -> int:
        return os.getpid()


def _settle(future: asyncio.Future, answer: Any) -> None:
    if future.done():
        return
    if isinstance(answer, BaseException):
        future.set_exception(answer)
    else:
        future.set_result(answer)


def start_shared_replica(config: TeacherConfig, *, max_batch: int, max_wait_s: float, num_cpus: float,
                         num_gpus: float = 0.0, resources: dict[str, float] | None = None, max_restarts: int = 3,
                         scheduling_strategy: Any = None) -> Any:
    """One service replica (not waited for: the caller polls its ``pid`` to know it has loaded)."""
    import ray

    return ray.remote(SharedTeacher).options(
        num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None, max_restarts=max_restarts,
        max_task_retries=0, scheduling_strategy=scheduling_strategy).remote(config, max_batch, max_wait_s)
