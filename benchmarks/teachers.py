"""Teacher service: latency hiding, replica scaling, and offline soft labels.

    python -m benchmarks.teachers            # the full set
    python -m benchmarks.teachers --quick    # fewer rounds and steps, under two minutes

Prints one JSON object per line, each with ``name`` and ``ratio``. Every ratio
is measured inside this run with its candidates interleaved round by round
(these machines are shared and noisy) and is the median over rounds:

- ``latency_hiding_pipelined`` / ``_sync``: student throughput with a teacher
  whose latency equals one student step (40 ms: the teacher sleeps, as one on
  other hardware would; the student step computes for 40 ms), pipelined with a
  window of W or called synchronously, over the student alone, in steady state
  (each pass's first batch, which fills the window, is left out). Goal >= 0.95
  pipelined; ~0.5 expected synchronously.
- ``replica_scaling_{compute,sleep}_{k}``: teacher throughput with k replicas
  over one, for a CPU-bound teacher (a conv net, one thread per actor) and a
  latency-bound one; ``efficiency`` = ratio / k. The compute case cannot
  exceed the machine's free cores (2 here, shared), and says so.
- ``offline_vs_plain``: student throughput reading stored soft labels (KD
  loss, views applied from the cache) over plain hard-label training with the
  same loader. Goal >= 0.97.
- ``shared_vs_own_pools``, ``batching_across_jobs``, ``scale_up_time``: the shared teacher service
  (``benchmarks.teacher_service``): two jobs on one pool against a pool each, cross-job batching on
  and off, and the time from a wait rise to a new replica serving.
- ``bytes_per_sample_*``: the stored soft labels' size per sample (payload and
  tar file) for fp32 and fp16 logits and top-k, over fp32, for the digits job
  (10 classes, 2 teachers, 2 views) and an ImageNet-sized one (1000 classes,
  one teacher, one view, k = 10).

Absolute times are reported for context only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ARCH = textwrap.dedent('''
    import time

    import torch
    from torch import nn


    class Sleepy(nn.Module):
        """Digits-sized teacher that sleeps ``delay`` s per batch: latency without CPU."""

        def __init__(self, num_classes=10, in_chans=1, delay=0.0):
            super().__init__()
            self.delay = delay
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 64, num_classes))

        def forward(self, x):
            if self.delay:
                time.sleep(self.delay)
            return self.head(x)


    class Compute(nn.Module):
        """CIFAR-sized conv stack: a CPU-bound teacher."""

        def __init__(self, num_classes=10, in_chans=3, width=48):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            return self.head(self.body(x))
''')


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def _write_teachers(folder: Path) -> dict[str, Path]:
    (folder / "bench_arch.py").write_text(ARCH)
    ns: dict = {}
    exec(ARCH, ns)  # noqa: S102 - the same source the actors import
    torch.manual_seed(0)
    paths = {"sleepy": folder / "sleepy.pt", "compute": folder / "compute.pt"}
    torch.save(ns["Sleepy"]().state_dict(), paths["sleepy"])
    torch.save(ns["Compute"]().state_dict(), paths["compute"])
    return paths


def _start(path: Path, arch: str, replicas: int, shape: tuple[int, ...], **options) -> list:
    from teachers.service import TeacherConfig, start_replicas

    config = TeacherConfig(name=arch.lower(), source=str(path), format="state_dict",
                           arch=f"bench_arch:{arch}", arch_options=options, num_classes=10,
                           input_shape=shape, threads=1)
    return start_replicas(config, replicas, num_cpus=0.01, max_restarts=0)


class Student:
    """The demo student (MobileNet v1, alpha 0.25) and one SGD step, with KD when given logits."""

    def __init__(self) -> None:
        import students

        torch.manual_seed(0)
        self.model = students.create_model("mobilenet_v1", num_classes=10, in_chans=1, variant="cifar",
                                           alpha=0.25)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def step(self, x: torch.Tensor, y: torch.Tensor, teacher: list[torch.Tensor] | None = None) -> None:
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        if teacher:
            target = torch.stack([torch.softmax(z / 4, 1) for z in teacher]).mean(0)
            kd = F.kl_div(F.log_softmax(logits / 4, 1), target, reduction="batchmean")
            loss = 0.3 * loss + 0.7 * 16 * kd
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _rounds(candidates: dict[str, Callable[[], float | None]], rounds: int) -> dict[str, list[float]]:
    """Seconds per candidate per round (what it returns, else its wall time); the order rotates."""
    names = list(candidates)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            took = candidates[name]()
            times[name].append(took if took is not None else time.perf_counter() - start)
    return times


def _after_first(steps) -> float:
    """Seconds from the end of the first step to the end of the last: a pass's steady state.

    Each pass (an epoch, in training) starts with an empty window, so its first
    batch waits one whole teacher latency; that cost is per epoch, not per step.
    """
    start = None
    for _ in steps:
        start = start or time.perf_counter()
    return time.perf_counter() - start


def _ratio(times: dict[str, list[float]], fast: str, slow: str) -> float:
    """Median over rounds of time(fast) / time(slow), i.e. throughput(slow) / throughput(fast)."""
    return statistics.median(a / b for a, b in zip(times[fast], times[slow], strict=True))


def _ratios(times: dict[str, list[float]], base: str, other: str) -> dict[str, float]:
    """``ratio`` (median of per-round ratios) and ``ratio_best`` (fastest round over fastest round:
    the least disturbed pair on a shared machine)."""
    return {"ratio": round(_ratio(times, base, other), 3),
            "ratio_best": round(min(times[base]) / min(times[other]), 3)}


class FixedStep:
    """A student step that computes (1-thread matmuls, the GIL released as in real training) for a set
    wall-clock time: the step's length does not drift with the machine's load, so the ratio measures
    what the client costs and hides, not the neighbours."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.a = torch.randn(96, 96)

    def step(self, x: torch.Tensor, y: torch.Tensor, teacher: list[torch.Tensor] | None = None) -> None:
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            torch.mm(self.a, self.a)


def student_batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g))
            for _ in range(steps)]


def bench_latency_hiding(student: FixedStep, batches: list, handles: list, rounds: int, window: int) -> list:
    """Two replicas, each sleeping one student step per batch: latency = a step, capacity to spare
    (one replica's capacity would equal the student's, and Ray's per-call overhead tips it under)."""
    from teachers.client import Prefetcher, TeacherPool

    step_s = student.seconds

    pool = TeacherPool(["sleepy"], [handles])
    pool(batches[0][0])

    def alone() -> float:
        return _after_first(student.step(x, y) for x, y in batches)

    def pipelined() -> float:
        stream = Prefetcher(batches, pool, window)
        return _after_first(student.step(x, y, out.logits) for (x, y), out in stream)

    def sync() -> float:
        return _after_first(student.step(x, y, pool(x).logits) for x, y in batches)

    times = _rounds({"alone": alone, "pipelined": pipelined, "sync": sync}, rounds)
    steps = len(batches)
    common = {"student_step_ms": round(1000 * step_s, 1), "teacher_latency_ms": round(1000 * step_s, 1),
              "teacher_replicas": len(handles), "steps": steps, "rounds": rounds}
    ms = {k: round(1000 * statistics.median(v) / (steps - 1), 1) for k, v in times.items()}
    return [
        {"name": "latency_hiding_pipelined", **_ratios(times, "alone", "pipelined"),
         "window": window, "goal": 0.95, "ms_per_step": ms, **common},
        {"name": "latency_hiding_sync", **_ratios(times, "alone", "sync"), "expected": 0.5,
         "ms_per_step": ms, **common}]


def bench_scaling(kind: str, handles: list, shape: tuple[int, ...], batches: int, rounds: int) -> list:
    from teachers.client import Prefetcher, TeacherPool

    x = torch.randn(32, *shape)
    counts = [k for k in (1, 2, 4) if k <= len(handles)]
    pools = {k: TeacherPool([kind], [handles[:k]]) for k in counts}
    for pool in pools.values():
        pool(x)

    def run(k: int) -> Callable[[], None]:
        def go() -> None:
            for _ in Prefetcher(((x,) for _ in range(batches)), pools[k], window=2 * k):
                pass
        return go

    times = _rounds({str(k): run(k) for k in counts}, rounds)
    rows = []
    for k in counts:
        ratio = _ratio(times, "1", str(k))
        rows.append({"name": f"replica_scaling_{kind}_{k}", **_ratios(times, "1", str(k)),
                     "efficiency": round(ratio / k, 3), "replicas": k,
                     "samples_per_s": round(32 * batches / statistics.median(times[str(k)]), 1),
                     "cpu_count": os.cpu_count(), **({"note": NOTE} if kind == "compute" else {})})
    return rows


NOTE = "CPU-bound: bounded by the free cores (2 here, shared with other work)"


def bench_offline(paths: dict[str, Path], sleepy: list, folder: Path, steps: int, rounds: int) -> list:
    from distill.data import CorruptCounter, pack_source, train_loader
    from distill.data.soft_labels import OfflineTeacher, SoftLabels
    from distill.data.views import view_batches
    from teachers.client import TeacherPool
    from teachers.offline import write_soft_labels

    root = folder / "digits"
    meta = pack_source("sklearn-digits", root, shard_size=100, val_per_class=30)
    soft_dir = root / "soft-bench"
    pool = TeacherPool(["a", "b"], [sleepy[:2], sleepy[2:]])
    info = {"views": 2, "padding": 1, "hflip": False, "num_classes": 10, "seed": 0}
    batches = view_batches(root, meta, views=2, padding=1, hflip=False, seed=0, batch_images=256)
    teach_s = _timed(lambda: write_soft_labels(batches, pool, soft_dir, info=info, output="fp16", topk=0,
                                               window=4, total=meta.count("train")))
    disk = sum(p.stat().st_size for p in soft_dir.glob("*.tar")) / meta.count("train")
    labels = SoftLabels(soft_dir, meta.shard_paths(root, "train"))

    def loader(padding: int):
        return train_loader(root, meta, batch_size=64, steps_per_epoch=steps, rank=0, world=1, seed=0,
                            shuffle_buffer=200, num_workers=0, crop_padding=padding, hflip=False,
                            counter=CorruptCounter("fail"))

    student = Student()
    plain_loader, offline = loader(1), OfflineTeacher(loader(0), labels, seed=0, length=steps)

    def plain() -> None:
        for x, y, _ in plain_loader:
            student.step(x, y)

    def cached() -> None:
        for (x, y, _), out in offline:
            student.step(x, y, out.logits)

    plain()
    cached()
    times = _rounds({"plain": plain, "offline": cached}, rounds)
    return [{"name": "offline_vs_plain", **_ratios(times, "plain", "offline"), "goal": 0.97,
             "ms_per_step": {k: round(1000 * statistics.median(v) / steps, 2) for k, v in times.items()},
             "steps": steps, "rounds": rounds, "soft_label_tar_bytes_per_sample": round(disk, 1),
             "teach_samples_per_s": round(meta.count("train") / teach_s, 1)}]


def bench_bytes() -> list:
    """Stored size per sample of each encoding, from the writer's own records."""
    import webdataset as wds

    from teachers.client import TeacherOutput
    from teachers.offline import ViewBatch, sample_records

    rows = []
    for job, classes, teachers, views, k in (("digits", 10, 2, 2, 5), ("imagenet", 1000, 1, 1, 10)):
        n = 64
        batch = ViewBatch("s.tar", [f"{i:07d}" for i in range(n)], np.zeros((n, views, 3), np.int16),
                          torch.zeros(n * views, 1))
        out = TeacherOutput([torch.randn(n * views, classes) for _ in range(teachers)], [{}] * teachers)
        sizes = {}
        for output in ("fp32", "fp16", "topk"):
            records = list(sample_records(batch, out, output, k))
            payload = sum(len(v) for r in records for name, v in r.items() if name != "__key__")
            buf = io.BytesIO()
            with wds.TarWriter(buf, encoder=False, mtime=0) as sink:
                for r in records:
                    sink.write(r)
            sizes[output] = (payload / n, len(buf.getvalue()) / n)
        for output, (payload, tar) in sizes.items():
            ratio = round(payload / sizes["fp32"][0], 3)
            rows.append({"name": f"bytes_per_sample_{job}_{output}", "ratio": ratio,
                         "payload_bytes": round(payload, 1), "tar_bytes": round(tar, 1),
                         "classes": classes, "teachers": teachers, "views": views,
                         **({"k": k} if output == "topk" else {})})
    return rows


BENCHES = ("bytes", "latency", "scaling", "offline", "service")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and steps: under two minutes")
    ap.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES), help="run these only")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    torch.set_num_threads(1)  # the student: one core, as a Ray Train worker with cpus_per_worker 1
    rounds, steps = (5, 12) if args.quick else (11, 24)
    import ray

    from teachers.service import stop_replicas

    if "bytes" in args.only:
        for row in bench_bytes():
            emit(row)
    if not set(args.only) - {"bytes"}:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        paths = _write_teachers(Path(tmp))
        step_s = 0.04
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}})
        try:
            sleepy = _start(paths["sleepy"], "Sleepy", 4, (1, 8, 8), delay=step_s)
            if "latency" in args.only:
                for row in bench_latency_hiding(FixedStep(step_s), student_batches(steps), sleepy[:2], rounds,
                                                window=4):
                    emit(row)
            if "scaling" in args.only:
                for row in bench_scaling("sleep", sleepy, (1, 8, 8), steps, max(3, rounds // 2)):
                    emit(row)
                compute = _start(paths["compute"], "Compute", 4, (3, 32, 32))
                for row in bench_scaling("compute", compute, (3, 32, 32), steps, max(3, rounds // 2)):
                    emit(row)
                stop_replicas(compute)
            if "service" in args.only:
                from benchmarks.teacher_service import bench_scale_up, bench_sharing

                for kind in ("sleep", "compute"):
                    for row in bench_sharing(paths, max(3, rounds // 2), steps * 2, kind):
                        emit(row)
                for row in bench_scale_up(paths):
                    emit(row)
            if "offline" in args.only:
                for row in bench_offline(paths, sleepy, Path(tmp), 8 if args.quick else 16, rounds + 2):
                    emit(row)
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
