"""Ray Serve against the project's own actors, for serving teachers (the judgement in README).

    python -m benchmarks.serve_vs_actors [--extra-path DIR]

Needs ``ray[serve]`` (fastapi, starlette, uvicorn); ``--extra-path`` appends a folder holding them to
``sys.path`` (after the venv, so nothing the project pins is shadowed). One JSON line per measurement:

- ``call_overhead``: round trip of one small request (16 x 10 fp16 logits back), sequential, for a
  plain actor call, the service's batching replica (``SharedTeacher``, batching off), and a Serve
  deployment handle; ``ratio`` is Serve's over the actor's (interleaved rounds, medians).
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
import time

import numpy as np


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


class Echo:
    """A teacher stand-in: answers a batch with fp16 logits after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[int] = []

    def infer(self, x: np.ndarray, job: str = "") -> dict:
        if self.delay:
            time.sleep(self.delay)
        return {"logits": np.zeros((len(x), 10), np.float16)}


def bench_overhead(rounds: int, calls: int) -> dict:
    import ray
    from ray import serve

    actor = ray.remote(Echo).options(num_cpus=0).remote()
    deployment = serve.deployment(Echo, ray_actor_options={"num_cpus": 0})
    handle = serve.run(deployment.bind(), name="echo", route_prefix=None)
    x = np.zeros((16, 1, 8, 8), np.float32)

    def actor_calls() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            ray.get(actor.infer.remote(x))
        return (time.perf_counter() - start) / calls

    def serve_calls() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            handle.infer.remote(x).result()
        return (time.perf_counter() - start) / calls

    shared = ray.remote(_EchoShared).options(num_cpus=0).remote()

    def shared_calls() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            ray.get(shared.infer.remote(x, "job"))
        return (time.perf_counter() - start) / calls

    fns = {"actor": actor_calls, "shared_replica": shared_calls, "serve_handle": serve_calls}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        names = list(fns)[r % 3:] + list(fns)[:r % 3]
        for name in names:
            times[name].append(fns[name]())
    ms = {k: round(1000 * statistics.median(v), 3) for k, v in times.items()}
    serve.delete("echo")
    return {"name": "call_overhead", "ratio": round(ms["serve_handle"] / ms["actor"], 2),
            "shared_replica_ratio": round(ms["shared_replica"] / ms["actor"], 2), "ms_per_call": ms,
            "calls": calls, "rounds": rounds}


class _EchoShared:
    """The service's replica body around ``Echo`` (same fair queue and batching thread, no model)."""

    def __init__(self, max_batch: int = 0, delay: float = 0.0) -> None:
        import threading

        from teachers.batching import FairQueue

        self.echo, self.max_batch = Echo(delay), max_batch
        self.queue = FairQueue()
        self.sizes: list[int] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            batch = self.queue.take(self.max_batch, 0.002)
            self.sizes.append(len(batch))
            out = self.echo.infer(np.concatenate([p.x for p in batch]))
            at = 0
            for p in batch:
                p.reply({"logits": out["logits"][at:at + len(p.x)]})
                at += len(p.x)

    async def infer(self, x: np.ndarray, job: str = "") -> dict:
        from teachers.batching import Pending, _settle

        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queue.put(Pending(job, np.asarray(x), time.perf_counter(),
                               lambda a: loop.call_soon_threadsafe(_settle, future, a)))
        return await future

    def mean_batch(self) -> float:
        return float(np.mean(self.sizes)) if self.sizes else 0.0


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


def bench_batch_cap(requests: int = 96, window: int = 8) -> dict:
    import ray
    from ray import serve

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
    shared = ray.remote(_EchoShared).options(num_cpus=0).remote(16 * len(x), 0.02)  # 16 requests of 8
    ray.get(shared.mean_batch.remote())
    walls["shared_replica"] = drive(lambda: (lambda ref: (lambda: ray.get(ref)))(shared.infer.remote(x, "job")))
    means["shared_replica"] = ray.get(shared.mean_batch.remote())
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
        emit(bench_overhead(args.rounds, 100))
        emit(bench_batch_cap())
        emit(bench_kill())
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
