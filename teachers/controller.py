"""The shared teacher service: a named, detached controller actor that owns the replicas.

``distill serve`` starts one ``ServiceController`` per service name. It places
each replica in a one-bundle placement group of its own (so replicas come and
go one at a time), waits for it to load, and advertises the serving ones with
a version number. Clients (``teachers.client.TeacherPool`` given a
``ServiceLink``) fetch that list once a second and report their students'
wait per step; a thread ticks every ``interval_s``, polls the replicas' load,
asks ``teachers.scaling`` whether to add or remove one, and writes what it saw
and decided to TensorBoard (scalars under ``service/``, decisions as text).

Adding: the new replica's bundle gets ``placement_wait_s`` to be placed. When
it does not fit, a cluster with the Ray autoscaler is asked for it
(``ray.autoscaler.sdk.request_resources``, with every bundle the service
holds, since that request replaces the previous one) and the replica waits;
without an autoscaler the attempt is logged and dropped. Removing: the
replica leaves the advertised list first, keeps answering for ``drain_s``
(clients that have not refreshed yet still reach it) and until its queue is
empty, and only then is killed, so scaling down costs no retry.

The replicas are the controller's children: stopping the service (or its
controller dying) ends them all.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .batching import start_shared_replica
from .scaling import Decision, ScalingConfig, ScalingPolicy, TeacherLoad
from .service import TeacherConfig

PREFIX = "distill-service-"
PLACING, LOADING, SERVING, DRAINING = "placing", "loading", "serving", "draining"
RATE_WINDOW_S = 5.0  # per-job rates in status are over this many seconds
FORGET_S = 120.0  # a job that has not reported for this long leaves the status
REPORT_S = 1.0  # clients report (and refresh their replica list) this often


@dataclass
class ReplicaResources:
    """What one replica of a teacher takes (a placement bundle) and where it may go."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    custom: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def bundle(self) -> dict[str, float]:
        return {k: float(v) for k, v in {**self.custom, "CPU": self.num_cpus, "GPU": self.num_gpus}.items() if v} \
            or {"CPU": 0.001}


@dataclass
class ServiceLink:
    """What a job needs to use a service (picklable: it travels to Ray Train workers)."""

    name: str
    controller: Any
    job: str


@dataclass(eq=False)
class Replica:
    teacher: int
    number: int
    pg: Any
    state: str = PLACING
    handle: Any = None
    ready: Any = None  # ref of the first pid call
    since: float = field(default_factory=time.monotonic)
    asked_autoscaler: bool = False
    last: dict[str, Any] | None = None  # previous stats poll
    pid: int | None = None
    busy: float = 0.0  # fraction of the last interval it computed
    queued: int = 0  # requests waiting or running on it at the last poll
    placed: Any = None  # ref that resolves once its bundle is placed

    def __post_init__(self) -> None:
        self.placed = self.pg.ready()


def controller_name(name: str) -> str:
    return PREFIX + name


def find_service(name: str, namespace: str | None = None) -> Any | None:
    """The controller of service ``name``, or None when no such service runs."""
    import ray

    try:
        return ray.get_actor(controller_name(name), namespace=namespace)
    except ValueError:
        return None


class ServiceController:
    """Body of the controller actor (threaded: status and reports are answered while a tick runs)."""

    def __init__(self, name: str, configs: list[TeacherConfig], resources: list[ReplicaResources],
                 initial: list[int], scaling: ScalingConfig, tensorboard_dir: str | None = None,
                 autoscaler: bool = False, max_restarts: int = 3) -> None:
        self.name, self.configs, self.resources = name, configs, resources
        self.scaling, self.autoscaler, self.max_restarts = scaling, autoscaler, max_restarts
        self.policy = ScalingPolicy(scaling)
        self.replicas: list[Replica] = []
        self.counter = [0] * len(configs)
        self.version = 0
        self.decisions: list[dict[str, Any]] = []
        self.reports: dict[str, deque] = {}  # job -> (time, wait_s, steps, requests, samples)
        self.loads: list[TeacherLoad] = []
        self.ticks = 0
        self.started = time.monotonic()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.writer = None
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(tensorboard_dir)
        for t, n in enumerate(initial):
            for _ in range(n):
                self._add(t)
        self._wait_serving(scaling.placement_wait_s)
        threading.Thread(target=self._loop, name="service-ticks", daemon=True).start()

    # ------------------------------------------------------------------ what clients call

    def handles(self, known: int = -1) -> dict[str, Any] | None:
        """The serving replicas per teacher, or None when ``known`` is already the current version."""
        with self._lock:
            if known == self.version:
                return None
            return {"version": self.version, "names": [c.name for c in self.configs],
                    "hints": {c.name: list(c.hints) for c in self.configs},
                    "output": self.configs[0].output if self.configs else "fp16",
                    "handles": [[r.handle for r in self.replicas if r.teacher == t and r.state == SERVING]
                                for t in range(len(self.configs))]}

    def report(self, job: str, wait_s: float, steps: int, requests: int, samples: int) -> None:
        """A client's counts since its last report (fire and forget)."""
        with self._lock:
            self.reports.setdefault(job, deque()).append((time.monotonic(), wait_s, steps, requests, samples))

    # ------------------------------------------------------------------ what operators call

    def status(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            teachers = []
            for t, c in enumerate(self.configs):
                mine = [r for r in self.replicas if r.teacher == t]
                load = next((x for x in self.loads if x.name == c.name), TeacherLoad(c.name, 0))
                teachers.append({"name": c.name, **{s: sum(r.state == s for r in mine)
                                                    for s in (SERVING, LOADING, PLACING, DRAINING)},
                                 "queued": load.queued, "busy": round(load.busy, 3)})
            jobs = []
            for job, entries in self.reports.items():
                recent = [e for e in entries if now - e[0] <= RATE_WINDOW_S]
                span = min(RATE_WINDOW_S, now - self.started) or 1.0
                wait, steps = sum(e[1] for e in recent), sum(e[2] for e in recent)
                jobs.append({"job": job, "requests_per_s": round(sum(e[3] for e in recent) / span, 2),
                             "samples_per_s": round(sum(e[4] for e in recent) / span, 1),
                             "wait_ms_per_step": round(1000 * wait / steps, 2) if steps else None,
                             "last_seen_s": round(now - entries[-1][0], 1) if entries else None})
            s = self.scaling
            return {"name": self.name, "version": self.version, "uptime_s": round(now - self.started, 1),
                    "teachers": teachers, "jobs": jobs, "decisions": self.decisions[-10:],
                    "scaling": {"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                                "wait_threshold_ms": s.wait_threshold_ms, "max_batch": s.max_batch,
                                "max_wait_ms": s.max_wait_ms}}

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return self.decisions[since:]

    def shutdown(self) -> None:
        """End the replicas and their placement groups (the caller then kills this actor)."""
        self._stop.set()
        with self._lock:
            for r in self.replicas:
                self._end(r)
            self.replicas = []
            self.version += 1
            if self.autoscaler:
                self._ask_autoscaler()
        if self.writer is not None:
            self.writer.close()

    # ------------------------------------------------------------------ replicas

    def _add(self, t: int) -> Replica:
        from ray.util.placement_group import placement_group

        res = self.resources[t]
        pg = placement_group([res.bundle()], strategy="PACK",
                             bundle_label_selector=[dict(res.labels)] if res.labels else None)
        replica = Replica(t, self.counter[t], pg)
        self.counter[t] += 1
        self.replicas.append(replica)
        return replica

    def _advance(self, r: Replica, now: float) -> None:
        """Move a starting replica on: placed -> actor started -> loaded (serving), or give up."""
        import ray

        if r.state == PLACING:
            if ray.wait([r.placed], timeout=0)[0]:
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

                res, s = self.resources[r.teacher], self.scaling
                r.handle = start_shared_replica(
                    self.configs[r.teacher], max_batch=s.max_batch, max_wait_s=s.max_wait_ms / 1000,
                    num_cpus=res.num_cpus, num_gpus=res.num_gpus, resources=res.custom,
                    max_restarts=self.max_restarts,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(r.pg, placement_group_bundle_index=0))
                r.ready, r.state, r.since = r.handle.pid.remote(), LOADING, now
            elif now - r.since > self.scaling.placement_wait_s:
                if self.autoscaler:
                    if not r.asked_autoscaler:
                        r.asked_autoscaler = True
                        self._ask_autoscaler()
                        self._log(self.configs[r.teacher].name, "request", "replica does not fit now: asked the "
                                  f"autoscaler for {self.resources[r.teacher].bundle()}")
                else:
                    self._drop(r, f"replica does not fit: no node has {self.resources[r.teacher].bundle()} free "
                                  f"after {self.scaling.placement_wait_s:g} s and the cluster has no autoscaler")
        elif r.state == LOADING and ray.wait([r.ready], timeout=0)[0]:
            try:
                r.pid = ray.get(r.ready)
            except Exception as exc:  # noqa: BLE001 - a teacher that fails to load: say why, keep serving
                self._drop(r, f"replica failed to load: {str(exc).strip().splitlines()[-1]}")
                return
            r.state = SERVING
            self.version += 1
            self._log(self.configs[r.teacher].name, "serving", f"replica {r.number} serving "
                      f"({self._count(r.teacher)} replica(s))")

    def _drop(self, r: Replica, reason: str) -> None:
        self._end(r)
        self.replicas.remove(r)
        self._log(self.configs[r.teacher].name, "failed", reason)

    def _end(self, r: Replica) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        if r.handle is not None:
            ray.kill(r.handle, no_restart=True)
        remove_placement_group(r.pg)

    def _ask_autoscaler(self) -> None:
        """Ask for every bundle the service wants: the request replaces the previous one."""
        from ray.autoscaler.sdk import request_resources

        kept = [r for r in self.replicas if r.state != DRAINING]
        labels = [dict(self.resources[r.teacher].labels) for r in kept]
        request_resources(bundles=[self.resources[r.teacher].bundle() for r in kept],
                          bundle_label_selectors=labels if any(labels) else None)

    def _count(self, t: int) -> int:
        return sum(r.teacher == t and r.state == SERVING for r in self.replicas)

    def _wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(r.state in (PLACING, LOADING) for r in self.replicas):
            now = time.monotonic()
            for r in list(self.replicas):
                self._advance(r, now)
            if now > deadline:
                break
            time.sleep(0.05)
        missing = [self.configs[t].name for t in range(len(self.configs)) if not self._count(t)]
        if missing:
            for r in self.replicas:
                self._end(r)
            raise RuntimeError(f"teachers {missing}: no replica serving after {timeout_s:g} s "
                               f"({'; '.join(d['reason'] for d in self.decisions) or 'not placed in time'})")

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.scaling.interval_s):
            now = time.monotonic()
            try:
                self._tick(now, now - last)
            except Exception as exc:  # noqa: BLE001 - a bad tick is logged; the service keeps serving
                print(f"[service {self.name}] tick failed: {exc!r}", flush=True)
            last = now

    def _poll(self, elapsed: float) -> list[TeacherLoad]:
        import ray

        live = [r for r in self.replicas if r.state in (SERVING, DRAINING)]
        refs = [r.handle.stats.remote() for r in live]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=self.scaling.interval_s)[0]) if refs else set()
        busy = [0.0] * len(self.configs)
        queued = [0] * len(self.configs)
        for r, ref in zip(live, refs, strict=True):
            if ref not in ready:
                continue
            try:
                st = ray.get(ref)
            except ray.exceptions.ActorDiedError:
                if r.state == SERVING:
                    self._drop(r, f"replica {r.number} died for good (max_restarts spent)")
                    self.version += 1
                continue
            except ray.exceptions.RayActorError:  # restarting: the clients re-send; look again next tick
                continue
            same = r.last is not None and r.last["pid"] == st["pid"]
            r.busy = (st["busy_s"] - r.last["busy_s"]) / max(elapsed, 1e-6) if same else 0.0
            r.last = st
            r.queued = st["queued"] + (1 if st["running"] else 0)
            if r.state == SERVING:
                busy[r.teacher] += r.busy
                queued[r.teacher] += st["queued"]
        loads = []
        for t, c in enumerate(self.configs):
            serving = self._count(t)
            starting = sum(r.teacher == t and r.state in (PLACING, LOADING) for r in self.replicas)
            loads.append(TeacherLoad(c.name, serving, starting, min(1.0, busy[t] / max(1, serving)), queued[t]))
        return loads

    def _waits(self, now: float) -> dict[str, float]:
        """Each job's wait per step over its last two reports at least (jobs that made steps then)."""
        waits = {}
        for job, entries in self.reports.items():
            while len(entries) > 1 and now - entries[0][0] > RATE_WINDOW_S:
                entries.popleft()  # the newest stays: status says when the job was last seen
            if now - entries[-1][0] > FORGET_S:
                entries.clear()
            recent = [e for e in entries if now - e[0] <= max(2 * REPORT_S, 1.5 * self.scaling.interval_s)]
            steps = sum(e[2] for e in recent)
            if steps:
                waits[job] = 1000 * sum(e[1] for e in recent) / steps
        for job in [j for j, e in self.reports.items() if not e]:
            del self.reports[job]
        return waits

    def _tick(self, now: float, elapsed: float) -> None:
        with self._lock:
            for r in list(self.replicas):
                if r.state in (PLACING, LOADING):
                    self._advance(r, now)
                elif r.state == DRAINING and now - r.since >= self.scaling.drain_s and not r.queued:
                    self._end(r)
                    self.replicas.remove(r)
                    self._log(self.configs[r.teacher].name, "removed", f"replica {r.number} drained and stopped")
            self.loads = loads = self._poll(elapsed)
            waits = self._waits(now)
            for t, load in enumerate(loads):
                if load.replicas + load.starting < self.scaling.min_replicas:
                    self._add(t)
                    self._log(load.name, "add", f"{load.replicas} serving < min_replicas "
                                                f"{self.scaling.min_replicas}: replacing a lost replica")
            decision = self.policy.decide(now, waits, loads)
            if decision is not None:
                self._apply(decision, now)
            self.ticks += 1
            self._write(loads, waits, decision)

    def _apply(self, d: Decision, now: float) -> None:
        t = [c.name for c in self.configs].index(d.teacher)
        if d.delta > 0:
            self._add(t)
            self._log(d.teacher, "add", d.reason)
            if self.autoscaler:
                self._ask_autoscaler()
            return
        serving = [r for r in self.replicas if r.teacher == t and r.state == SERVING]
        victim = min(serving, key=lambda r: (r.queued, -r.number))
        victim.state, victim.since = DRAINING, now
        self.version += 1
        self._log(d.teacher, "remove", d.reason)
        if self.autoscaler:
            self._ask_autoscaler()

    def _log(self, teacher: str, action: str, reason: str) -> None:
        entry = {"n": len(self.decisions), "time": time.time(), "uptime_s": round(time.monotonic() - self.started, 1),
                 "teacher": teacher, "action": action, "serving": self._count([c.name for c in self.configs].index(
                     teacher)), "reason": reason}
        self.decisions.append(entry)
        print(f"[service {self.name}] {teacher}: {action}: {reason}", flush=True)
        if self.writer is not None:
            self.writer.add_text("service/decisions", f"{teacher} {action}: {reason}", self.ticks)

    def _write(self, loads: list[TeacherLoad], waits: dict[str, float], decision: Decision | None) -> None:
        if self.writer is None:
            return
        step = self.ticks
        for load in loads:
            self.writer.add_scalar(f"service/replicas/{load.name}", load.replicas, step)
            self.writer.add_scalar(f"service/starting/{load.name}", load.starting, step)
            self.writer.add_scalar(f"service/busy_fraction/{load.name}", load.busy, step)
            self.writer.add_scalar(f"service/queue_depth/{load.name}", load.queued, step)
        for job, wait in waits.items():
            self.writer.add_scalar(f"service/wait_ms_per_step/{job}", wait, step)
        self.writer.add_scalar("service/scale_decision", decision.delta if decision else 0, step)
        if step % 10 == 0:
            self.writer.flush()


def start_service(name: str, configs: list[TeacherConfig], resources: list[ReplicaResources], initial: list[int],
                  scaling: ScalingConfig, *, namespace: str | None = None, tensorboard_dir: str | None = None,
                  autoscaler: bool = False) -> Any:
    """Start the detached controller (it places and loads the first replicas before returning)."""
    import ray

    controller = ray.remote(ServiceController).options(
        name=controller_name(name), namespace=namespace, lifetime="detached", num_cpus=0, max_concurrency=16,
        max_restarts=0).remote(name, configs, resources, initial, scaling, tensorboard_dir, autoscaler)
    ray.get(controller.status.remote())  # its __init__ ran: replicas serving, or its error raised here
    return controller


def stop_service(controller: Any) -> None:
    import ray

    try:
        ray.get(controller.shutdown.remote(), timeout=60)
    finally:
        ray.kill(controller, no_restart=True)
