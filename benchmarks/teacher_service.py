"""Shared teacher service rows of ``python -m benchmarks.teachers`` (``--only service``).

Two jobs run at once in this process (two threads, each a ``Prefetcher`` with its own window and a
fixed-length student step), against:

- ``own``: a pool of their own each (job-owned actors, as `distill run` starts them);
- ``shared``: one service whose replicas batch requests across the jobs (``max_batch``, ``max_wait``);
- ``shared_nobatch``: the same service with cross-request batching off (``max_batch: 0``).

All three hold the same number of replicas of a CPU-bound teacher; the rounds interleave them.
Rows: ``shared_vs_own_pools`` and ``batching_across_jobs`` (total samples/s ratio, and teacher compute
seconds per sample from the replicas' own counters), and ``scale_up_time``: a job whose student outruns
one replica of a latency-bound teacher, from its start (the wait rises at once) to the scale-up decision,
to the new replica serving, to the client's first answer from it; the ratio is the job's rate after
over before.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

import torch

JOB_BATCH = 8  # small students: where two half-empty teacher passes cost the most
WINDOW = 4


def _config(path: Path, arch: str, shape: tuple[int, ...], **options: Any) -> Any:
    from teachers.service import TeacherConfig

    return TeacherConfig(name=arch.lower(), source=str(path), format="state_dict", arch=f"bench_arch:{arch}",
                         arch_options=options, num_classes=10, input_shape=shape, threads=1)


def _service(name: str, config: Any, replicas: int, **scaling: Any) -> Any:
    from teachers.controller import ReplicaResources, start_service
    from teachers.scaling import ScalingConfig

    knobs = {"min_replicas": replicas, "max_replicas": replicas, **scaling}
    return start_service(name, [config], [ReplicaResources(num_cpus=0.01)], [replicas], ScalingConfig(**knobs),
                         namespace="distill-bench")


def _busy(handles: list) -> tuple[float, int]:
    import ray

    stats = ray.get([h.stats.remote() for h in handles])
    return sum(s["busy_s"] for s in stats), sum(s["served"] for s in stats)


def _two_jobs(pools: list, steps: int, step_s: float, shape: tuple[int, ...]) -> float:
    """Wall seconds for both jobs to make ``steps`` steps each, side by side."""
    from benchmarks.teachers import FixedStep
    from teachers.client import Prefetcher

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(JOB_BATCH, *shape, generator=g),) for _ in range(steps)]
    errors: list[BaseException] = []

    def job(pool: Any) -> None:
        student = FixedStep(step_s)
        try:
            for _ in Prefetcher(batches, pool, WINDOW):
                student.step(None, None)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(p,)) for p in pools]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


TEACHERS = {  # kind -> (arch, input shape, options)
    "compute": ("Compute", (3, 32, 32), {}),  # a CPU conv net: its cost per sample is flat in the batch size
    "sleep": ("Sleepy", (1, 8, 8), {"delay": 0.02}),  # a pass costs the same for 8 or 64 samples, as on a GPU
}


def bench_sharing(paths: dict[str, Path], rounds: int, steps: int, kind: str) -> list[dict]:
    from teachers.client import TeacherPool
    from teachers.controller import ServiceLink, stop_service
    from teachers.service import start_replicas, stop_replicas

    arch, shape, options = TEACHERS[kind]
    replicas, step_s = 2, 0.005
    config = _config(paths[arch.lower()], arch, shape, **options)
    own = [start_replicas(config, 1, num_cpus=0.01, max_restarts=0) for _ in range(replicas)]
    services = {"shared": _service(f"bench-shared-{kind}", config, replicas, max_batch=256, max_wait_ms=2),
                "shared_nobatch": _service(f"bench-nobatch-{kind}", config, replicas, max_batch=0)}
    try:
        pools = {"own": [TeacherPool([config.name], [h]) for h in own]}
        for name, controller in services.items():
            pools[name] = [TeacherPool([config.name], ServiceLink(name, controller, f"job{i}")) for i in range(2)]
        handles = {"own": [h for hs in own for h in hs],
                   **{k: pools[k][0].teams[0].handles for k in services}}
        compute: dict[str, list[float]] = {k: [] for k in pools}

        def run(name: str):
            def go() -> float:
                busy0, served0 = _busy(handles[name])
                took = _two_jobs(pools[name], steps, step_s, shape)
                busy1, served1 = _busy(handles[name])
                compute[name].append((busy1 - busy0) / max(1, served1 - served0))
                return took
            return go

        for name in pools:
            run(name)()  # warm up: first calls, thread pools
        for v in compute.values():
            v.clear()
        from benchmarks.teachers import _ratios, _rounds

        times = _rounds({k: run(k) for k in pools}, rounds)
        samples = 2 * steps * JOB_BATCH
        rate = {k: round(samples / statistics.median(v), 1) for k, v in times.items()}
        per = {k: round(1e3 * statistics.median(v), 4) for k, v in compute.items()}  # ms per sample
        common = {"teacher": kind, "jobs": 2, "job_batch": JOB_BATCH, "window": WINDOW, "replicas": replicas,
                  "student_step_ms": 1000 * step_s, "steps": steps, "rounds": rounds,
                  "samples_per_s": rate, "teacher_compute_ms_per_sample": per}
        return [
            {"name": f"shared_vs_own_pools_{kind}", **_ratios(times, "own", "shared"),
             "compute_per_sample_ratio": round(per["shared"] / per["own"], 3), **common},
            {"name": f"batching_across_jobs_{kind}", **_ratios(times, "shared_nobatch", "shared"),
             "compute_per_sample_ratio": round(per["shared"] / per["shared_nobatch"], 3), **common}]
    finally:
        for hs in own:
            stop_replicas(hs)
        for controller in services.values():
            stop_service(controller)


def bench_scale_up(paths: dict[str, Path], delay_s: float = 0.04, step_s: float = 0.01) -> list[dict]:
    """From the job's start (its wait rises at once: one replica answers a batch per ``delay_s``, the
    student wants one per ``step_s``) to a second replica answering it."""
    import ray

    from benchmarks.teachers import FixedStep
    from teachers.client import Prefetcher, TeacherPool
    from teachers.controller import ServiceLink, stop_service

    config = _config(paths["sleepy"], "Sleepy", (1, 8, 8), delay=delay_s)
    controller = _service("bench-elastic", config, 1, max_replicas=2, wait_threshold_ms=5, up_after_s=1.0,
                          interval_s=0.25, max_batch=0, idle_after_s=600)
    try:
        pool = TeacherPool(["sleepy"], ServiceLink("bench-elastic", controller, "job"))
        student = FixedStep(step_s)
        x = torch.randn(16, 1, 8, 8)
        marks: dict[str, float] = {}
        steps_at: list[float] = []

        def batches():
            extra = 40
            while extra:
                yield (x,)
                if len(pool.stats.replica_served) > 1:
                    marks.setdefault("first_answer", time.time())
                    extra -= 1

        marks["start"] = time.time()
        for _ in Prefetcher(batches(), pool, WINDOW):
            student.step(None, None)
            steps_at.append(time.time())
        log = ray.get(controller.events.remote(0))
        added = next(i for i, e in enumerate(log) if e["action"] == "add")
        events = {"add": log[added]["time"],
                  "serving": next(e["time"] for e in log[added:] if e["action"] == "serving")}
        first = marks["first_answer"]
        before = [t for t in steps_at if t < events["add"]]
        after = [t for t in steps_at if t > first]
        rate_before = (len(before) - 1) / (before[-1] - before[0])
        rate_after = (len(after) - 1) / (after[-1] - after[0])
        return [{"name": "scale_up_time", "ratio": round(rate_after / rate_before, 3),
                 "decision_s": round(events["add"] - marks["start"], 2),
                 "replica_serving_s": round(events["serving"] - marks["start"], 2),
                 "first_answer_s": round(first - marks["start"], 2),
                 "load_s": round(events["serving"] - events["add"], 2), "up_after_s": 1.0,
                 "steps_per_s_before": round(rate_before, 1), "steps_per_s_after": round(rate_after, 1),
                 "teacher_latency_ms": 1000 * delay_s, "student_step_ms": 1000 * step_s}]
    finally:
        stop_service(controller)
