"""Ray Serve against the project's own actors, for serving teachers (the judgement in README).

    python -m benchmarks.serve_vs_actors [--extra-path DIR]

Needs ``ray[serve]`` (fastapi, starlette, uvicorn); ``--extra-path`` appends a folder holding them to
``sys.path`` (after the venv, so nothing the project pins is shadowed). One JSON line per measurement:

- ``call_overhead``: round trip of one small request (a digits teacher's 16 x 10 fp16 logits back),
  sequential, for the same ``TeacherWorker`` as a plain actor, inside the service's replica
  (``SharedTeacher``, batching off) and as a Serve deployment; ``ratio`` is Serve's over the actor's
  (interleaved rounds, medians).
- ``serve_batch_cap``: 16 requests kept in flight (two clients' windows of 8) against one replica
  that batches up to 16 requests per 20 ms pass: the mean batch Serve forms with its default
  ``max_ongoing_requests`` (5) and with 16, against the one the service's replica forms (no cap on
  requests outstanding); and the wall time for all requests.
- ``serve_replica_kill``: a Serve replica killed with a window of requests on it: how many of them the
  caller got back as errors (Serve re-sends only requests not yet running), where the project's
  client re-sends all (``tests/test_shared_service.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


class Echo:
    """A stand-in Serve replica for the kill test: answers a batch after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def infer(self, x: np.ndarray) -> dict:
        if self.delay:
            time.sleep(self.delay)
        return {"logits": np.zeros((len(x), 10), np.float16)}


def _teacher(folder: Path, delay: float) -> Any:
    """The benchmark's sleeping digits teacher (``benchmarks.teachers``), loaded by every candidate."""
    from benchmarks.teachers import _write_teachers
    from teachers.service import TeacherConfig

    folder.mkdir(parents=True, exist_ok=True)
    paths = _write_teachers(folder)
    return TeacherConfig(name="sleepy", source=str(paths["sleepy"]), format="state_dict", arch="bench_arch:Sleepy",
                         arch_options={"delay": delay}, num_classes=10, input_shape=(1, 8, 8), threads=1)


def _mean_batch(shared: Any) -> float:
    import ray

    st = ray.get(shared.stats.remote())
    return sum(c[0] for c in st["jobs"].values()) / max(1, st["batches"])


def bench_overhead(folder: Path, rounds: int, calls: int) -> dict:
    import ray
    from ray import serve

    from teachers.batching import SharedTeacher
    from teachers.service import TeacherWorker

    config = _teacher(folder, 0.0)
    actor = ray.remote(TeacherWorker).options(num_cpus=0).remote(config)
    shared = ray.remote(SharedTeacher).options(num_cpus=0).remote(config, 0, 0.0)
    handle = serve.run(serve.deployment(TeacherWorker, ray_actor_options={"num_cpus": 0}).bind(config),
                       name="teacher", route_prefix=None)
    x = np.zeros((16, 1, 8, 8), np.float32)

    def timed(call) -> Any:
        def go() -> float:
            start = time.perf_counter()
            for _ in range(calls):
                call()
            return (time.perf_counter() - start) / calls
        return go

    fns = {"actor": timed(lambda: ray.get(actor.infer.remote(x))),
           "shared_replica": timed(lambda: ray.get(shared.infer.remote(x, "job"))),
           "serve_handle": timed(lambda: handle.infer.remote(x).result())}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name in list(fns)[r % 3:] + list(fns)[:r % 3]:
            times[name].append(fns[name]())
    ms = {k: round(1000 * statistics.median(v), 3) for k, v in times.items()}
    serve.delete("teacher")
    return {"name": "call_overhead", "ratio": round(ms["serve_handle"] / ms["actor"], 2),
            "shared_replica_ratio": round(ms["shared_replica"] / ms["actor"], 2), "ms_per_call": ms,
            "calls": calls, "rounds": rounds}


class BatchedEcho:
    """Serve's way: ``@serve.batch`` collects concurrent calls on one replica."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    async def infer(self, x: np.ndarray) -> dict:
        return await self._batched(x)

    def mean_batch(self) -> float:
        return float(np.mean(self.sizes)) if self.sizes else 0.0


def _batched_class():
    from ray import serve

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _batched(self, xs: list[np.ndarray]) -> list[dict]:
        self.sizes.append(len(xs))
        await asyncio.sleep(0.02)  # the teacher's pass
        return [{"logits": np.zeros((len(x), 10), np.float16)} for x in xs]

    BatchedEcho._batched = _batched
    return BatchedEcho


def bench_batch_cap(folder: Path, requests: int = 96, window: int = 8) -> dict:
    import ray
    from ray import serve

    from teachers.batching import SharedTeacher

    x = np.zeros((8, 1, 8, 8), np.float32)
    cls = _batched_class()

    def drive(call) -> float:
        start = time.perf_counter()
        pending: list = []
        for _ in range(requests):
            if len(pending) >= 2 * window:  # two clients' windows
                pending.pop(0)()
            pending.append(call())
        for p in pending:
            p()
        return time.perf_counter() - start

    means, walls = {}, {}
    for label, ongoing in (("serve_default_max_ongoing", None), ("serve_max_ongoing_16", 2 * window)):
        options = {"max_ongoing_requests": ongoing} if ongoing else {}
        handle = serve.run(serve.deployment(cls, ray_actor_options={"num_cpus": 0}, **options).bind(),
                           name="batched", route_prefix=None)
        walls[label] = drive(lambda h=handle: h.infer.remote(x).result)
        means[label] = handle.mean_batch.remote().result()
        serve.delete("batched")
    # the service's replica, 20 ms a pass, up to 16 requests of 8 samples
    shared = ray.remote(SharedTeacher).options(num_cpus=0).remote(_teacher(folder, 0.02), 16 * len(x), 0.002)
    ray.get(shared.pid.remote())
    walls["shared_replica"] = drive(lambda: (lambda ref: (lambda: ray.get(ref)))(shared.infer.remote(x, "job")))
    means["shared_replica"] = _mean_batch(shared)
    return {"name": "serve_batch_cap", "ratio": round(means["serve_default_max_ongoing"] / means["shared_replica"], 3),
            "mean_batch_requests": {k: round(v, 2) for k, v in means.items()},
            "wall_s": {k: round(v, 2) for k, v in walls.items()}, "requests": requests,
            "in_flight": 2 * window, "max_batch_requests": 16, "pass_ms": 20}


def bench_kill(window: int = 8) -> dict:
    import ray
    from ray import serve

    deployment = serve.deployment(Echo, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=2 * window)
    handle = serve.run(deployment.options(num_replicas=2).bind(0.2), name="killme", route_prefix=None)
    x = np.zeros((8, 1, 8, 8), np.float32)
    responses = [handle.infer.remote(x) for _ in range(window)]
    time.sleep(0.1)  # running on the replicas now
    victim = [a for a in ray.util.list_named_actors(all_namespaces=True)
              if "SERVE_REPLICA" in a["name"] and "killme" in a["name"]][0]
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    failed = 0
    for r in responses:
        try:
            r.result(timeout_s=60)
        except Exception:  # noqa: BLE001 - counted: the caller had to handle it
            failed += 1
    serve.delete("killme")
    return {"name": "serve_replica_kill", "ratio": round(failed / window, 3), "failed_to_caller": failed,
            "in_flight": window, "replicas": 2,
            "note": "the project's client re-sends every call on a dead replica; the caller sees none"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extra-path", default=None, help="folder with ray[serve]'s extra packages (appended)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    if args.extra_path:
        sys.path.append(args.extra_path)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    try:
        from ray import serve  # noqa: F401
    except ImportError as exc:
        print(f"error: Ray Serve is not installed ({exc}); pip install 'ray[serve]' or pass --extra-path",
              file=sys.stderr)
        return 2
    env = {"env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                        "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), args.extra_path) if p)}}
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env=env)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            emit(bench_overhead(Path(tmp) / "a", args.rounds, 100))
            emit(bench_batch_cap(Path(tmp) / "b"))
            emit(bench_kill())
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
