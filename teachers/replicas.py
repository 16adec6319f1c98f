"""One teacher's replicas as the client sees them: how busy each is, and whether it is up.

Ray restarts a crashed actor (``max_restarts``) but says nothing to the caller
beyond failing the calls that were on it, so health is inferred here. A replica
whose call failed is *down*: it gets a ``pid`` probe, and new work goes to the
replicas that are up (or, when none is, to a down one, where Ray holds the
call until the restart). The probe's answer brings it back *up*, counted as a
restart when the process id changed; a probe refused with ``ActorDiedError``
a few times in a row means its restarts are spent, and it is *dead* for good.

Load is least outstanding *work*: the replica whose unfinished calls (plus the
new one) take the least time at its own measured speed (a moving average of the
compute time each actor reports). Between equal replicas that is plain
least-outstanding; a replica twice as slow gets about half as much. (Counting
calls alone sends a slow replica a full share: a pipelined client submits in
bursts, and the fast replica always looks busy right after a burst.) Ties go
to the replica with fewer unfetched calls, then round-robin.

A shared service's replica set changes while a job runs (``update``): new
replicas join *up*; one the service no longer lists is *retired*: it gets no
new work, its unfinished calls are still fetched (or re-sent if it goes), and
it counts neither as a failure nor as down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UP, DOWN, DEAD, RETIRED = "up", "down", "dead", "retired"
DEAD_AFTER = 3  # consecutive ActorDiedError probes before a replica counts as gone for good
EWMA = 0.3  # weight of the newest compute time in a replica's speed estimate


@dataclass(eq=False)
class Call:
    """One teacher's share of one batch: the replica working on it and the ref to its answer."""

    batch_ref: Any  # the input: an object ref, or the array itself when small
    size: int
    ref: Any = None
    replica: int = -1
    attempts: int = 0


class TeacherUnavailableError(RuntimeError):
    """Every replica of a teacher is dead, or a batch failed more times than allowed."""


@dataclass
class HealthCounts:
    """Events since the last drain: replicas seen failing, replicas seen back after a restart."""

    failures: int = 0
    restarts: int = 0


class Replicas:
    def __init__(self, name: str, handles: list[Any]) -> None:
        self.name = name
        self.handles = handles
        self.calls: list[set[Call]] = [set() for _ in handles]  # sent and not yet fetched
        self.state = [UP] * len(handles)
        self.pid: list[int | None] = [None] * len(handles)
        self.probe: list[Any] = [None] * len(handles)
        self.died_probes = [0] * len(handles)
        self.compute_s: list[float | None] = [None] * len(handles)
        self.counts = HealthCounts()
        self._cursor = 0

    def __len__(self) -> int:
        return len(self.handles)

    def not_up(self) -> int:
        return sum(s not in (UP, RETIRED) for s in self.state)

    def listed(self) -> int:
        """Replicas in service (not retired), serving or not."""
        return sum(s != RETIRED for s in self.state)

    def update(self, handles: list[Any]) -> None:
        """Make ``handles`` the replicas in service: new ones join, unlisted ones retire."""
        listed = set(handles)
        for r, h in enumerate(self.handles):
            if h not in listed and self.state[r] != DEAD:
                self.state[r], self.probe[r] = RETIRED, None
        known = set(self.handles)
        for h in handles:
            if h not in known:
                self.handles.append(h)
                self.calls.append(set())
                self.state.append(UP)
                self.probe.append(None)
                self.died_probes.append(0)
                self.pid.append(None)  # learnt from its first answer
                self.compute_s.append(None)

    def pick(self) -> int:
        """The replica for the next call; raises ``TeacherUnavailableError`` when all are dead."""
        self.poll_probes()
        n = len(self.handles)
        candidates = [r for r in range(n) if self.state[r] == UP] or \
                     [r for r in range(n) if self.state[r] == DOWN]
        if not candidates:
            raise TeacherUnavailableError(f"teacher {self.name!r}: all {n} replica(s) are dead "
                                          "(their max_restarts are spent)")
        if len(candidates) > 1:
            busy = self._unfinished(candidates)
            known = [s for s in self.compute_s if s is not None]
            typical = float(sum(known) / len(known)) if known else 1.0
            cost = {r: (busy[r] + 1) * (self.compute_s[r] or typical) for r in candidates}
            candidates.sort(key=lambda r: (cost[r], len(self.calls[r]), (r - self._cursor) % n))
        r = candidates[0]
        self._cursor = (r + 1) % n
        return r

    def _unfinished(self, replicas: list[int]) -> dict[int, int]:
        import ray

        refs = [c.ref for r in replicas for c in self.calls[r]]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)[0]) if refs else set()
        return {r: sum(c.ref not in ready for c in self.calls[r]) for r in replicas}

    def learn_pids(self) -> None:
        """Ask every replica for its process id once, so the first restart is recognised as one."""
        import ray
        from ray.exceptions import RayActorError

        for r, ref in enumerate([h.pid.remote() for h in self.handles]):
            try:
                self.pid[r] = ray.get(ref)
            except RayActorError:
                self.failed(r)

    def answered(self, r: int, pid: int, compute_s: float) -> None:
        """A call on ``r`` came back from process ``pid`` after ``compute_s`` of work.

        An answer from the old process of a replica that is down was computed
        before it failed: it says nothing about the replica now. An answer from
        a new process means Ray restarted it.
        """
        last = self.compute_s[r]
        self.compute_s[r] = compute_s if last is None else (1 - EWMA) * last + EWMA * compute_s
        if self.state[r] == UP or pid != self.pid[r]:
            self._seen(r, pid)

    def failed(self, r: int) -> bool:
        """A call on ``r`` raised ``RayActorError``; True when this is news (it was up until now)."""
        if self.state[r] == RETIRED:
            self.probe[r] = None
        if self.state[r] != UP:
            return False
        self.state[r] = DOWN
        self.counts.failures += 1
        self._send_probe(r)
        return True

    def _seen(self, r: int, pid: int) -> None:
        if self.pid[r] is not None and pid != self.pid[r]:
            self.counts.restarts += 1
        self.pid[r] = pid
        if self.state[r] not in (DEAD, RETIRED):
            self.state[r] = UP
        self.probe[r] = None
        self.died_probes[r] = 0

    def _send_probe(self, r: int) -> None:
        self.probe[r] = self.handles[r].pid.remote()

    def poll_probes(self) -> None:
        """Settle the probes that have answered, without waiting for the others."""
        import ray
        from ray.exceptions import ActorDiedError, RayActorError

        waiting = [p for p in self.probe if p is not None]
        if not waiting:
            return
        ready = set(ray.wait(waiting, num_returns=len(waiting), timeout=0, fetch_local=True)[0])
        for r, probe in enumerate(self.probe):
            if probe is None or probe not in ready:
                continue
            try:
                self._seen(r, ray.get(probe))
            except ActorDiedError:
                self.died_probes[r] += 1
                if self.died_probes[r] >= DEAD_AFTER:
                    self.state[r], self.probe[r] = DEAD, None
                else:
                    self._send_probe(r)
            except RayActorError:  # unavailable: still restarting
                self._send_probe(r)

    def drain_counts(self) -> HealthCounts:
        counts, self.counts = self.counts, HealthCounts()
        return counts
