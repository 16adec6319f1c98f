"""When the teacher service adds or removes a replica, and why (pure policy, no Ray).

The signal is what the students pay, not what the teachers do: each attached
client reports how long its student waited for teacher answers per step. A
replica is added when the worst-off job's wait per step stays above
``wait_threshold_ms`` for ``up_after_s``, to the teacher whose replicas are the
busiest (the ensemble answers when its slowest member does). No second one is
added while one is still starting, and the wait must stay high for another
``up_after_s`` after it serves, so one burst does not add several. A replica is
removed when its teacher's replicas stay below ``idle_busy`` (fraction of
wall time computing) with nothing queued for ``idle_after_s`` and no job is
waiting, never going under ``min_replicas``; it is added back only by a new
wait rise. Every decision carries its reason as a sentence for the log,
TensorBoard and ``distill status --service``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ScalingConfig:
    """The service's knobs (``teachers.serving`` in the spec); min == max turns scaling off."""

    min_replicas: int = 1
    max_replicas: int = 1
    wait_threshold_ms: float = 20.0
    up_after_s: float = 3.0
    idle_after_s: float = 30.0
    idle_busy: float = 0.05
    interval_s: float = 1.0
    max_batch: int = 256
    max_wait_ms: float = 2.0
    placement_wait_s: float = 30.0
    drain_s: float = 3.0  # a removed replica keeps answering this long (clients refresh every second)


@dataclass
class TeacherLoad:
    """One teacher as the controller saw it over the last interval."""

    name: str
    replicas: int  # serving
    starting: int = 0  # placed or loading, not serving yet
    busy: float = 0.0  # mean fraction of the interval its serving replicas computed
    queued: int = 0  # requests waiting in its replicas' queues


@dataclass
class Decision:
    teacher: str
    delta: int  # +1 add a replica, -1 remove one
    reason: str


@dataclass
class ScalingPolicy:
    config: ScalingConfig
    high_since: float | None = None
    idle_since: dict[str, float] = field(default_factory=dict)

    def decide(self, now: float, wait_ms: dict[str, float], loads: list[TeacherLoad]) -> Decision | None:
        """At most one change per call. ``wait_ms``: each attached job's student wait per step over the
        last interval (jobs that made no step are left out)."""
        c = self.config
        job, worst = max(wait_ms.items(), key=lambda kv: kv[1]) if wait_ms else (None, 0.0)
        if worst > c.wait_threshold_ms:
            self.idle_since.clear()
            self.high_since = now if self.high_since is None else self.high_since
            held = now - self.high_since
            if held < c.up_after_s or any(load.starting for load in loads):
                return None
            room = [load for load in loads if load.replicas + load.starting < c.max_replicas]
            if not room:
                return None
            pick = max(room, key=lambda load: (load.busy, load.queued / max(1, load.replicas)))
            self.high_since = None
            return Decision(pick.name, +1, f"job {job!r} waited {worst:.1f} ms/step > {c.wait_threshold_ms:g} ms "
                                           f"for {held:.1f} s; {pick.name} busiest (busy {pick.busy:.2f}, "
                                           f"{pick.queued} queued) -> {pick.replicas + 1} replica(s)")
        self.high_since = None
        for load in loads:
            if load.busy >= c.idle_busy or load.queued or load.starting:
                self.idle_since.pop(load.name, None)
                continue
            since = self.idle_since.setdefault(load.name, now)
            if load.replicas > c.min_replicas and now - since >= c.idle_after_s:
                self.idle_since[load.name] = now  # the next removal needs another idle stretch
                return Decision(load.name, -1, f"{load.name} idle: busy {load.busy:.2f} < {c.idle_busy:g} with "
                                               f"nothing queued for {now - since:.1f} s, no job waiting "
                                               f"-> {load.replicas - 1} replica(s)")
        return None
