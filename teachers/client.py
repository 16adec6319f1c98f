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

Given a ``ServiceLink`` instead of handles, the pool uses a shared service
(``teachers.controller``): it tags each call with the job's name (the
replicas share fairly between jobs), picks up the service's replica list once
a second as it grows and shrinks, and reports its student's wait per step,
which is what the service scales on. Nothing else changes: the same balancing,
re-sends and exactly-once answers.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .controller import REPORT_S, ServiceLink
from .replicas import UP, Call, Replicas, TeacherUnavailableError
from .service import decode_logits

INLINE_BYTES = 100 * 1024  # Ray's max_direct_call_object_size: smaller arguments skip the object store

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
    replicas: dict[str, int] = field(default_factory=dict)
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
        for name, n in self.replicas.items():
            out[f"teachers/replicas/{name}"] = float(n)
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

    def __init__(self, names: list[str], handles: list[list[Any]] | ServiceLink, max_retries: int = 10,
                 backoff_s: float = 0.05) -> None:
        self.link = handles if isinstance(handles, ServiceLink) else None
        if self.link is not None:
            handles = self._service_handles(names)
        if len(names) != len(handles) or any(not h for h in handles):
            raise ValueError("every teacher needs at least one replica handle")
        self.names = names
        self.teams = [Replicas(n, list(h)) for n, h in zip(names, handles, strict=True)]
        for team in self.teams:
            team.learn_pids()
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.stats = PoolStats()
        # A Prefetcher's thread submits and fetches while the training loop drains the stats.
        self._lock = threading.RLock()
        # Answers arrive as read-only object-store views (zero-copy); the student only reads them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self._unreported = [0.0, 0, 0, 0]  # wait_s, steps, requests, samples since the last report
        self._next_refresh = time.monotonic() + REPORT_S
        self._refresh: Any = None

    def _service_handles(self, names: list[str]) -> list[list[Any]]:
        import ray

        info = ray.get(self.link.controller.handles.remote(-1))
        missing = [n for n in names if n not in info["names"]]
        if missing:
            raise TeacherUnavailableError(f"service {self.link.name!r} serves {info['names']}, not {missing}")
        self._version = info["version"]
        return [info["handles"][info["names"].index(n)] for n in names]

    def _sync_service(self) -> None:
        """Once a second: adopt the service's replica list if it changed, and report this job's counts."""
        import ray

        if self.link is None:
            return
        if self._refresh is not None and ray.wait([self._refresh], timeout=0)[0]:
            info, self._refresh = ray.get(self._refresh), None
            if info is not None:
                self._version = info["version"]
                for team in self.teams:
                    team.update(info["handles"][info["names"].index(team.name)])
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + REPORT_S
        if self._refresh is None:
            self._refresh = self.link.controller.handles.remote(self._version)
        self.flush_report()

    def flush_report(self) -> None:
        """Send this job's counts since the last report to the shared service (no-op without one).
        Called once a second while training and by the ``Prefetcher`` at the end of each pass over
        its loader: a job shorter than a report interval would otherwise never show up in
        ``distill status``."""
        with self._lock:
            if self.link is not None and (self._unreported[1] or self._unreported[2]):
                self.link.controller.report.remote(self.link.job, *self._unreported)
                self._unreported = [0.0, 0, 0, 0]

    @property
    def handles(self) -> list[list[Any]]:
        return [team.handles for team in self.teams]

    def _send(self, t: int, call: Call) -> None:
        team = self.teams[t]
        r = team.pick()
        call.replica = r
        handle = team.handles[r]
        call.ref = handle.infer.remote(call.batch_ref, self.link.job) if self.link else handle.infer.remote(call.batch_ref)
        team.calls[r].add(call)

    def submit(self, x: torch.Tensor) -> Request:
        import ray

        batch = np.ascontiguousarray(x.detach().cpu().numpy())
        # A small batch rides inside each call (as Ray inlines small arguments); a large one is put in
        # the object store once and shared by all teachers (and by any re-send).
        batch_ref = batch if batch.nbytes < INLINE_BYTES else ray.put(batch)
        calls = [Call(batch_ref, len(x)) for _ in self.teams]
        with self._lock:
            self._sync_service()
            self._unreported[2] += 1
            self._unreported[3] += len(x)
            for t, call in enumerate(calls):
                self._send(t, call)
        return Request(calls, time.perf_counter())

    def _replica_failed(self, t: int, r: int) -> None:
        """Re-send every call still on replica ``r`` (the failed one included)."""
        team = self.teams[t]
        with self._lock:
            team.failed(r)
            for call in list(team.calls[r]):
                team.calls[r].discard(call)
                call.attempts += 1
                if call.attempts > self.max_retries:
                    raise TeacherUnavailableError(f"teacher {team.name!r}: a batch failed {call.attempts} "
                                                  "times; giving up")
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
            with self._lock:
                team.calls[call.replica].discard(call)
                team.answered(call.replica, out["pid"], out["latency_s"])
            return out

    def fetch(self, req: Request, student_waits: bool = True) -> TeacherOutput:
        """The answers to ``req``; the time blocked here counts as student wait unless told otherwise
        (a ``Prefetcher`` thread fetches ahead and measures the student's wait itself)."""
        start = time.perf_counter()
        outs = [self._get(t, call) for t, call in enumerate(req.calls)]
        done = time.perf_counter()
        logits, hints = [], []
        with self._lock:
            st = self.stats
            st.wait_s += (done - start) if student_waits else 0.0
            self._unreported[0] += (done - start) if student_waits else 0.0
            self._unreported[1] += 1
            st.latencies_s.append(done - req.submitted)
            for team, call, out in zip(self.teams, req.calls, outs, strict=True):
                logits.append(decode_logits(out))
                hints.append({k: torch.from_numpy(v) for k, v in out["hints"].items()})
                replica = f"{team.name}_{call.replica}"
                st.served[team.name] = st.served.get(team.name, 0) + call.size
                st.replica_served[replica] = st.replica_served.get(replica, 0) + call.size
                st.replica_busy_s[replica] = st.replica_busy_s.get(replica, 0.0) + out["latency_s"]
        return TeacherOutput(logits, hints)

    def record(self, wait_s: float = 0.0, in_flight: int | None = None) -> None:
        """Student wait and window occupancy, as a ``Prefetcher`` sees them."""
        with self._lock:
            self.stats.wait_s += wait_s
            self._unreported[0] += wait_s
            if in_flight is not None:
                self.stats.in_flight.append(in_flight)

    def __call__(self, x: torch.Tensor) -> TeacherOutput:
        """Synchronous request (no pipelining): evaluation and the baseline in benchmarks."""
        return self.fetch(self.submit(x))

    def drain_stats(self) -> PoolStats:
        with self._lock:
            stats, self.stats = self.stats, PoolStats(window=self.stats.window)
            for team in self.teams:
                team.poll_probes()
                counts = team.drain_counts()
                stats.failures += counts.failures
                stats.restarts += counts.restarts
                stats.dead_replicas += team.not_up()
                stats.replicas[team.name] = team.listed()
        stats.elapsed_s = self.stats.started - stats.started
        return stats


class Prefetcher:
    """Iterates ``(batch, TeacherOutput)`` with ``window`` teacher requests in flight.

    ``loader`` yields batches whose first element is the input tensor that the
    teachers must see (the augmented view the student trains on). With
    ``thread=True`` (the default) a background thread reads the loader, submits
    and fetches, one answered batch ahead of the consumer: the client's own work
    (serializing, Ray calls, decoding) then overlaps the student's step instead
    of adding to it. Order is kept; an error in the thread is raised to the consumer.
    """

    def __init__(self, loader: Iterable, pool: TeacherPool, window: int, length: int | None = None,
                 thread: bool = True) -> None:
        self.loader = loader
        self.pool = pool
        self.window = max(1, window)
        self.length = length
        self.thread = thread

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("length unknown")
        return self.length

    def __iter__(self) -> Iterator[tuple[Any, TeacherOutput]]:
        self.pool.stats.window = self.window
        try:
            if not self.thread:
                yield from self._answers(student_waits=True)
            else:
                yield from _ahead(self._answers(student_waits=False), self.pool.record)
        finally:  # also when the trainer stops mid-pass: this pass's last counts reach a shared service
            self.pool.flush_report()

    def _answers(self, student_waits: bool) -> Iterator[tuple[Any, TeacherOutput]]:
        pending: deque[tuple[Any, Request]] = deque()
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
            self.pool.record(in_flight=len(pending))
            batch, req = pending.popleft()
            yield batch, self.pool.fetch(req, student_waits)


def _ahead(items: Iterator, record: Any) -> Iterator:
    """Run ``items`` in a thread, one item ahead; ``record(wait_s=...)`` gets the consumer's waits."""
    box: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                box.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((False, exc))
        finally:
            items.close()

    threading.Thread(target=produce, name="teacher-prefetch", daemon=True).start()
    try:
        while True:
            start = time.perf_counter()
            ok, item = box.get()
            record(wait_s=time.perf_counter() - start)
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
