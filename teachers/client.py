"""The student side of the teacher service: fan-out, load balancing, pipelining.

``TeacherPool`` sends each batch to one replica of every teacher, choosing the
replica with the fewest outstanding requests. ``Prefetcher`` wraps a data
loader and keeps ``window`` batches in flight, so while the student trains on
batch i the teachers already work on batches i+1..i+W: the student only waits
when the teachers are truly slower than it.

A request whose actor died is re-sent, to another replica when there is one or
to the same (restarted, ``max_restarts``) actor, and each batch's answer is
taken exactly once. Dead replicas, retries and latencies are counted for
TensorBoard.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .service import decode_logits


@dataclass
class TeacherOutput:
    """One batch's answer: fp32 logits and hint features per teacher, in spec order."""

    logits: list[torch.Tensor]
    hints: list[dict[str, torch.Tensor]]


@dataclass
class _Request:
    batch_ref: Any
    refs: list[Any]
    replicas: list[int]
    submitted: float


@dataclass
class PoolStats:
    """Counters since the last ``drain_stats`` call."""

    latencies_s: list[float] = field(default_factory=list)
    wait_s: float = 0.0
    retries: int = 0
    dead_replicas: int = 0
    served: dict[str, int] = field(default_factory=dict)


class TeacherPool:
    """Replicated teachers behind one ``submit``/``fetch`` interface."""

    def __init__(self, names: list[str], handles: list[list[Any]], max_retries: int = 5) -> None:
        if len(names) != len(handles) or any(not h for h in handles):
            raise ValueError("every teacher needs at least one replica handle")
        self.names = names
        self.handles = handles
        self.outstanding = [[0] * len(h) for h in handles]
        self.max_retries = max_retries
        self.stats = PoolStats()

    def _pick(self, t: int, avoid: int | None = None) -> int:
        load = self.outstanding[t]
        choices = [i for i in range(len(load)) if i != avoid] or list(range(len(load)))
        return min(choices, key=lambda i: load[i])

    def _send(self, t: int, batch_ref: Any, avoid: int | None = None) -> tuple[Any, int]:
        r = self._pick(t, avoid)
        self.outstanding[t][r] += 1
        return self.handles[t][r].infer.remote(batch_ref), r

    def submit(self, x: torch.Tensor) -> _Request:
        import ray

        batch_ref = ray.put(np.ascontiguousarray(x.detach().cpu().numpy()))
        sent = [self._send(t, batch_ref) for t in range(len(self.handles))]
        return _Request(batch_ref, [s[0] for s in sent], [s[1] for s in sent], time.perf_counter())

    def _get_one(self, req: _Request, t: int) -> dict[str, Any]:
        import ray
        from ray.exceptions import RayActorError

        for attempt in range(self.max_retries + 1):
            try:
                out = ray.get(req.refs[t])
                self.outstanding[t][req.replicas[t]] -= 1
                return out
            except RayActorError:
                self.outstanding[t][req.replicas[t]] -= 1
                self.stats.dead_replicas += 1
                if attempt == self.max_retries:
                    raise
                self.stats.retries += 1
                req.refs[t], req.replicas[t] = self._send(t, req.batch_ref, avoid=req.replicas[t])
        raise AssertionError("unreachable")

    def fetch(self, req: _Request) -> TeacherOutput:
        start = time.perf_counter()
        outs = [self._get_one(req, t) for t in range(len(self.handles))]
        done = time.perf_counter()
        self.stats.wait_s += done - start
        self.stats.latencies_s.append(done - req.submitted)
        logits, hints = [], []
        for name, out in zip(self.names, outs, strict=True):
            logits.append(decode_logits(out))
            hints.append({k: torch.from_numpy(v) for k, v in out["hints"].items()})
            self.stats.served[name] = self.stats.served.get(name, 0) + len(logits[-1])
        return TeacherOutput(logits, hints)

    def __call__(self, x: torch.Tensor) -> TeacherOutput:
        """Synchronous request (no pipelining): evaluation and the baseline in benchmarks."""
        return self.fetch(self.submit(x))

    def drain_stats(self) -> PoolStats:
        stats, self.stats = self.stats, PoolStats()
        return stats


class Prefetcher:
    """Iterates ``(batch, TeacherOutput)`` with ``window`` teacher requests in flight.

    ``loader`` yields batches whose first element is the input tensor that the
    teachers must see (the augmented view the student trains on).
    """

    def __init__(self, loader: Iterable, pool: TeacherPool, window: int, length: int | None = None) -> None:
        self.loader = loader
        self.pool = pool
        self.window = max(1, window)
        self.length = length

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("length unknown")
        return self.length

    def __iter__(self) -> Iterator[tuple[Any, TeacherOutput]]:
        pending: deque[tuple[Any, _Request]] = deque()
        source = iter(self.loader)
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.window:
                try:
                    batch = next(source)
                except StopIteration:
                    exhausted = True
                    break
                pending.append((batch, self.pool.submit(batch[0])))
            if not pending:
                return
            batch, req = pending.popleft()
            yield batch, self.pool.fetch(req)
