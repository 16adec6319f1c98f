"""The student side of the teacher service: fan-out, load balancing, pipelining.

``TeacherPool`` sends each batch to one replica of every teacher, choosing the
replica with the least outstanding work (``teachers.replicas``).
``Prefetcher`` wraps a data loader and keeps ``window`` batches in flight, so
while the student trains on batch i the teachers already work on batches
i+1..i+W: the student only waits when the teachers are truly slower than it.

When a replica fails, every request still on it is re-sent at once (to a
replica that is up, else to the restarting one), so the window stays full
instead of stalling once per lost request. Each request keeps exactly one live
reference to its answer, and the answer is taken once: nothing is lost and
nothing is counted twice. Failures, restarts, retries, latencies, samples
served per replica and window occupancy are counted for TensorBoard.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .replicas import UP, Call, Replicas, TeacherUnavailableError
from .service import decode_logits

__all__ = ["Prefetcher", "PoolStats", "TeacherOutput", "TeacherPool", "TeacherUnavailableError"]


@dataclass
class TeacherOutput:
    """One batch's answer: fp32 logits and hint features per teacher, in spec order."""

    logits: list[torch.Tensor]
    hints: list[dict[str, torch.Tensor]]


@dataclass
class Request:
    """One batch on its way through the pool: a ``Call`` per teacher."""

    calls: list[Call]
    submitted: float


@dataclass
class PoolStats:
    """What happened since the last ``drain_stats`` (``dead_replicas``: replicas not serving right now)."""

    latencies_s: list[float] = field(default_factory=list)
    wait_s: float = 0.0
    retries: int = 0
    failures: int = 0
    restarts: int = 0
    dead_replicas: int = 0
    served: dict[str, int] = field(default_factory=dict)
    replica_served: dict[str, int] = field(default_factory=dict)
    replica_busy_s: dict[str, float] = field(default_factory=dict)
    in_flight: list[int] = field(default_factory=list)
    window: int = 0
    started: float = field(default_factory=time.perf_counter)
    elapsed_s: float = 0.0

    def metrics(self) -> dict[str, float]:
        """TensorBoard scalars under ``teachers/``; rates are per second of this interval."""
        out = {"teachers/retries": float(self.retries), "teachers/replica_failures": float(self.failures),
               "teachers/restarts": float(self.restarts), "teachers/dead_replicas": float(self.dead_replicas)}
        if self.latencies_s:
            lat = np.array(self.latencies_s) * 1000
            out["teachers/latency_p50_ms"] = float(np.percentile(lat, 50))
            out["teachers/latency_p95_ms"] = float(np.percentile(lat, 95))
            out["teachers/student_wait_ms_per_step"] = 1000 * self.wait_s / len(lat)
        if self.in_flight and self.window:
            out["teachers/window_occupancy"] = float(np.mean(self.in_flight)) / self.window
        if self.elapsed_s > 0:
            for replica, n in self.replica_served.items():
                busy = self.replica_busy_s.get(replica, 0.0)
                out[f"teachers/samples_per_s/{replica}"] = n / self.elapsed_s
                out[f"teachers/busy_fraction/{replica}"] = busy / self.elapsed_s
        return out


class TeacherPool:
    """Replicated teachers behind one ``submit``/``fetch`` interface.

    ``max_retries`` bounds the re-sends of one teacher's share of one batch;
    re-sends to a replica that is not up yet back off from ``backoff_s``.
    """

    def __init__(self, names: list[str], handles: list[list[Any]], max_retries: int = 10,
                 backoff_s: float = 0.05) -> None:
        if len(names) != len(handles) or any(not h for h in handles):
            raise ValueError("every teacher needs at least one replica handle")
        self.names = names
        self.teams = [Replicas(n, list(h)) for n, h in zip(names, handles, strict=True)]
        for team in self.teams:
            team.learn_pids()
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.stats = PoolStats()
        # Answers arrive as read-only object-store views (zero-copy); the student only reads them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    @property
    def handles(self) -> list[list[Any]]:
        return [team.handles for team in self.teams]

    def _send(self, t: int, call: Call) -> None:
        team = self.teams[t]
        r = team.pick()
        call.replica = r
        call.ref = team.handles[r].infer.remote(call.batch_ref)
        team.calls[r].add(call)

    def submit(self, x: torch.Tensor) -> Request:
        import ray

        batch_ref = ray.put(np.ascontiguousarray(x.detach().cpu().numpy()))
        calls = [Call(batch_ref, len(x)) for _ in self.teams]
        for t, call in enumerate(calls):
            self._send(t, call)
        return Request(calls, time.perf_counter())

    def _replica_failed(self, t: int, r: int) -> None:
        """Re-send every call still on replica ``r`` (the failed one included)."""
        team = self.teams[t]
        team.failed(r)
        for call in list(team.calls[r]):
            team.calls[r].discard(call)
            call.attempts += 1
            if call.attempts > self.max_retries:
                raise TeacherUnavailableError(f"teacher {team.name!r}: a batch failed {call.attempts} times; "
                                              "giving up")
            self.stats.retries += 1
            self._send(t, call)

    def _get(self, t: int, call: Call) -> dict[str, Any]:
        import ray
        from ray.exceptions import RayActorError

        team = self.teams[t]
        while True:
            try:
                out = ray.get(call.ref)
            except RayActorError:
                self._replica_failed(t, call.replica)
                if team.state[call.replica] != UP:  # nowhere healthy to go: let the restart happen
                    time.sleep(min(2.0, self.backoff_s * 2 ** call.attempts))
                continue
            team.calls[call.replica].discard(call)
            team.answered(call.replica, out["pid"], out["latency_s"])
            return out

    def fetch(self, req: Request) -> TeacherOutput:
        start = time.perf_counter()
        outs = [self._get(t, call) for t, call in enumerate(req.calls)]
        done = time.perf_counter()
        self.stats.wait_s += done - start
        self.stats.latencies_s.append(done - req.submitted)
        logits, hints = [], []
        for team, call, out in zip(self.teams, req.calls, outs, strict=True):
            logits.append(decode_logits(out))
            hints.append({k: torch.from_numpy(v) for k, v in out["hints"].items()})
            replica, st = f"{team.name}_{call.replica}", self.stats
            st.served[team.name] = st.served.get(team.name, 0) + call.size
            st.replica_served[replica] = st.replica_served.get(replica, 0) + call.size
            st.replica_busy_s[replica] = st.replica_busy_s.get(replica, 0.0) + out["latency_s"]
        return TeacherOutput(logits, hints)

    def __call__(self, x: torch.Tensor) -> TeacherOutput:
        """Synchronous request (no pipelining): evaluation and the baseline in benchmarks."""
        return self.fetch(self.submit(x))

    def drain_stats(self) -> PoolStats:
        stats, self.stats = self.stats, PoolStats(window=self.stats.window)
        for team in self.teams:
            team.poll_probes()
            counts = team.drain_counts()
            stats.failures += counts.failures
            stats.restarts += counts.restarts
            stats.dead_replicas += team.not_up()
        stats.elapsed_s = self.stats.started - stats.started
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
        pending: deque[tuple[Any, Request]] = deque()
        source = iter(self.loader)
        exhausted = False
        self.pool.stats.window = self.window
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
            self.pool.stats.in_flight.append(len(pending))
            batch, req = pending.popleft()
            yield batch, self.pool.fetch(req)
