"""The shared teacher service: fair cross-job batching, the scaling policy, and a real service on Ray
that two jobs use at once while a replica dies and the service grows and shrinks.

Jobs here are clients in this process (one ``TeacherPool`` per job, each with its own ``ServiceLink``,
run side by side in threads), teachers the sleeping MLP of ``test_teacher_service``: latency is known
and the shared CPUs stay free. ``test_shared_service_e2e`` runs two real `distill run` processes.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from teachers.batching import FairQueue, Pending, split_answer
from teachers.client import Prefetcher, TeacherPool
from teachers.controller import ReplicaResources, ServiceLink, find_service, start_service, stop_service
from teachers.scaling import ScalingConfig, ScalingPolicy, TeacherLoad
from tests import test_teacher_service as base
from tests.tb_events import load_events, scalar_values
from tests.test_teacher_service import SLOW_ARCH, keyed_batches

ARCH_MODULE = "svc_slow_arch"  # not test_teacher_service's module name: one process may import both
ARCH = f"{ARCH_MODULE}:Slow"


@pytest.fixture(scope="module")
def slow_teacher(tmp_path_factory):
    """test_teacher_service's sleeping MLP, written next to its weights as a user ships a teacher."""
    folder = tmp_path_factory.mktemp("svc_teacher")
    (folder / f"{ARCH_MODULE}.py").write_text(SLOW_ARCH)
    ns: dict = {}
    exec(SLOW_ARCH, ns)  # noqa: S102 - the same source the actors import
    torch.manual_seed(0)
    torch.save(ns["Slow"]().state_dict(), folder / "slow.pt")
    return folder / "slow.pt"


def slow_config(path, delay: float, hints: list[str] | None = None):
    return base.slow_config(path, delay, hints=hints, arch=ARCH)


def direct_logits(path, x: torch.Tensor) -> torch.Tensor:
    return base.direct_logits(path, x, arch=ARCH)


def _pending(job: str, n: int, at: float = 0.0) -> Pending:
    return Pending(job, np.zeros((n, 1)), at or time.perf_counter(), lambda _: None)


# ---------------------------------------------------------------- fair queue (no Ray)

def test_fair_queue_round_robin_between_jobs():
    """A job with 20 queued requests cannot push another job's 2 behind its own: each batch takes one
    request per job in turn, and the job that goes first rotates."""
    q = FairQueue()
    for _ in range(20):
        q.put(_pending("flood", 8))
    for _ in range(2):
        q.put(_pending("small", 8))
    first = [[p.job for p in q.take(0, 0.0)] for _ in range(4)]  # batching off: one request a forward
    assert first == [["flood"], ["small"], ["flood"], ["small"]]
    q.put(_pending("small", 8))
    batch = [p.job for p in q.take(24, 0.0)]  # batching on: one from each job per pass, up to 24 samples
    assert sorted(batch) == ["flood", "flood", "small"] and batch.count("small") == 1
    assert q.depth() == 20 - 2 - 2


def test_fair_queue_batches_what_arrives_together():
    q = FairQueue()
    q.put(_pending("a", 16))
    started = time.perf_counter()
    threading.Timer(0.05, lambda: q.put(_pending("b", 48))).start()
    batch = q.take(64, 0.5)  # waits for the second job's request instead of running half empty...
    assert [p.job for p in batch] == ["a", "b"] and time.perf_counter() - started < 0.45
    q.put(_pending("a", 16))
    started = time.perf_counter()
    assert len(q.take(64, 0.1)) == 1  # ...but no longer than max_wait
    assert 0.08 < time.perf_counter() - started < 1.0
    q.put(_pending("a", 100, at=time.perf_counter() - 1))
    assert len(q.take(64, 0.1)) == 1  # larger than max_batch: runs alone, never split
    stop = threading.Event()
    stop.set()
    assert q.take(64, 0.1, stop) == []


def test_split_answer_gives_each_request_its_rows():
    out = {"logits": np.arange(10).reshape(5, 2), "hints": {"body": np.arange(5)}, "latency_s": 1.0, "pid": 7}
    a, b = split_answer(out, [2, 3])
    assert a["logits"].tolist() == [[0, 1], [2, 3]] and b["hints"]["body"].tolist() == [2, 3, 4]
    assert a["latency_s"] == pytest.approx(0.4) and b["batch_s"] == 1.0 and b["batch_size"] == 5
    assert a["pid"] == 7


# ---------------------------------------------------------------- scaling policy (no Ray)

def test_scaling_policy_up_on_sustained_wait_down_on_idle():
    config = ScalingConfig(min_replicas=1, max_replicas=3, wait_threshold_ms=10, up_after_s=2, idle_after_s=5)
    policy = ScalingPolicy(config)
    busy = [TeacherLoad("a", 1, busy=0.4), TeacherLoad("b", 1, busy=0.9, queued=3)]
    assert policy.decide(0.0, {"job1": 30.0}, busy) is None  # high, but not for long yet
    assert policy.decide(1.0, {"job1": 5.0, "job2": 2.0}, busy) is None  # dipped: the clock restarts
    assert policy.decide(2.0, {"job1": 30.0}, busy) is None
    up = policy.decide(4.5, {"job1": 30.0, "job2": 1.0}, busy)
    assert up.teacher == "b" and up.delta == 1  # the busiest teacher
    assert "job 'job1' waited 30.0 ms/step > 10 ms" in up.reason
    starting = [TeacherLoad("a", 1, busy=0.4), TeacherLoad("b", 1, starting=1, busy=0.9)]
    assert policy.decide(9.0, {"job1": 30.0}, starting) is None  # one is on its way
    full = [TeacherLoad("a", 3, busy=0.9), TeacherLoad("b", 3, busy=0.9)]
    assert policy.decide(20.0, {"job1": 30.0}, full) is None and policy.decide(30.0, {"j": 30.0}, full) is None
    idle = [TeacherLoad("a", 1, busy=0.0), TeacherLoad("b", 2, busy=0.01)]
    assert policy.decide(40.0, {}, idle) is None
    down = policy.decide(45.5, {}, idle)
    assert down.teacher == "b" and down.delta == -1 and "idle" in down.reason  # "a" is at min_replicas
    assert policy.decide(46.0, {}, idle) is None  # the next removal waits for another idle stretch


# ---------------------------------------------------------------- a real service

def _service(name: str, path, delay: float, scaling: ScalingConfig, replicas: int = 1, tb=None, hints=None):
    config = slow_config(path, delay, hints=hints)
    return start_service(name, [config], [ReplicaResources(num_cpus=0.1)], [replicas], scaling,
                         namespace="distill-tests", tensorboard_dir=str(tb) if tb else None)


def _job(controller, name: str) -> TeacherPool:
    return TeacherPool(["slow"], ServiceLink("svc", controller, name))


def _run_job(pool: TeacherPool, batches: list, step_s: float, seen: list, window: int = 4, on_step=None) -> None:
    for i, ((x, _y, keys), out) in enumerate(Prefetcher(batches, pool, window=window)):
        seen.append((keys, x, out))
        if on_step is not None:
            on_step(i)
        time.sleep(step_s)


def _check_exactly_once(seen: list, batches: list, path) -> None:
    assert [k for keys, _, _ in seen for k in keys] == [k for b in batches for k in b[2]]
    x = torch.cat([x for _, x, _ in seen])
    got = torch.cat([out.logits[0] for _, _, out in seen])
    torch.testing.assert_close(got, direct_logits(path, x).half().float(), rtol=1e-3, atol=1e-3)


def _stats_after_restart(ray, handles: list, timeout_s: float = 60.0) -> list[dict]:
    """Each replica's counters, once the killed one is back (Ray restarts it; its counters start over)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get([h.stats.remote() for h in handles])
        except ray.exceptions.RayActorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_two_jobs_share_one_service_through_a_replica_kill(ray_session, slow_teacher):
    """Two jobs at once on a 2-replica service: every batch answered once, with its own rows, although
    replicas batch the jobs' requests together; SIGKILLing a replica mid-run changes only the retry,
    failure and restart counters. Fair share through real replicas: a job with a deep window does
    not delay another's few requests."""
    scaling = ScalingConfig(min_replicas=2, max_replicas=2, max_batch=64, max_wait_ms=20, interval_s=0.5)
    controller = _service("svc", slow_teacher, 0.03, scaling, replicas=2)
    try:
        assert find_service("svc", "distill-tests") is not None
        a, b = _job(controller, "job-a"), _job(controller, "job-b")
        batches_a, batches_b = keyed_batches(30, seed=1), keyed_batches(30, seed=2)
        seen_a, seen_b = [], []
        victim = a.teams[0].pid[0]
        kill = lambda i: i == 10 and os.kill(victim, signal.SIGKILL)  # noqa: E731
        other = threading.Thread(target=_run_job, args=(b, batches_b, 0.01, seen_b))
        other.start()
        _run_job(a, batches_a, 0.01, seen_a, on_step=kill)
        other.join(timeout=120)
        _check_exactly_once(seen_a, batches_a, slow_teacher)
        _check_exactly_once(seen_b, batches_b, slow_teacher)
        stats_a, stats_b = a.drain_stats(), b.drain_stats()
        assert stats_a.served == {"slow": 30 * 16} and stats_b.served == {"slow": 30 * 16}
        assert stats_a.retries + stats_b.retries >= 1 and stats_a.failures + stats_b.failures >= 1
        status = ray_session.get(controller.status.remote())
        assert {j["job"] for j in status["jobs"]} == {"job-a", "job-b"}
        replica_stats = _stats_after_restart(ray_session, a.teams[0].handles)
        jobs = {}
        for st in replica_stats:
            for job, (_req, samples) in st["jobs"].items():
                jobs[job] = jobs.get(job, 0) + samples
        assert jobs["job-a"] >= 16 and jobs["job-b"] >= 16
        assert sum(st["batches"] for st in replica_stats) < sum(st["jobs"].get("job-a", [0])[0]
                                                                + st["jobs"].get("job-b", [0])[0]
                                                                for st in replica_stats)  # some batched together

        # fair share: 64 requests of "flood" queued at once, then 2 of "small": small's come back early
        flood, small = _job(controller, "flood"), _job(controller, "small")
        x = keyed_batches(1)[0][0]
        flood_reqs = [flood.submit(x) for _ in range(64)]
        small_reqs = [small.submit(x) for _ in range(2)]
        started = time.perf_counter()
        for req in small_reqs:
            small.fetch(req)
        small_s = time.perf_counter() - started
        for req in flood_reqs:
            flood.fetch(req)
        flood_s = time.perf_counter() - started
        assert small_s < 0.5 * flood_s, (small_s, flood_s)  # FIFO would have put them behind all 64
    finally:
        stop_service(controller)
    assert find_service("svc", "distill-tests") is None


def test_service_grows_under_wait_and_shrinks_when_idle(ray_session, slow_teacher, tmp_path):
    """Threshold low: a job whose student outruns one replica gets a second one while it runs; once
    it ends the extra replica is drained and removed. Both decisions carry their reason and show in
    the service's TensorBoard; the job's own pool picked the new replica up and used it."""
    scaling = ScalingConfig(min_replicas=1, max_replicas=2, wait_threshold_ms=5, up_after_s=0.5,
                            idle_after_s=1.5, interval_s=0.25, drain_s=1.0, max_batch=0)
    controller = _service("elastic", slow_teacher, 0.05, scaling, tb=tmp_path / "tb")
    try:
        pool = _job(controller, "eager")
        batches: list = []

        def until_grown():  # the job runs until its pool uses a second replica, then 20 batches more
            extra = 20
            for batch in keyed_batches(600, size=4):
                batches.append(batch)
                yield batch
                served = pool.stats.replica_served
                extra -= len(served) > 1
                if not extra:
                    return

        seen: list = []
        _run_job(pool, until_grown(), 0.0, seen, window=4)
        _check_exactly_once(seen, batches, slow_teacher)
        stats = pool.drain_stats()
        assert stats.retries == 0 and stats.failures == 0
        assert stats.replicas == {"slow": 2}
        assert len(stats.replica_served) == 2 and min(stats.replica_served.values()) > 0, stats.replica_served
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = ray_session.get(controller.status.remote())
            if status["teachers"][0]["serving"] == 1 and not status["teachers"][0]["draining"]:
                break
            time.sleep(0.25)
        actions = [(d["action"], d["reason"]) for d in status["decisions"]]
        assert status["teachers"][0]["serving"] == 1, actions
        assert [a for a, _ in actions] == ["serving", "add", "serving", "remove", "removed"], actions
        assert "ms/step > 5 ms" in actions[1][1] and "idle" in actions[3][1]
    finally:
        stop_service(controller)
    events = load_events(tmp_path / "tb")
    replicas = scalar_values(events, "service/replicas/slow")
    assert max(replicas) == 2 and replicas[-1] == 1 and replicas[0] == 1
    assert max(scalar_values(events, "service/wait_ms_per_step/eager")) > 5
    assert sorted(set(scalar_values(events, "service/scale_decision"))) == [-1, 0, 1]


# ---------------------------------------------------------------- real processes

def _job_doc(tmp_path, digits_root, teacher) -> dict:
    return {
        "name": "shared", "data": {"source": str(digits_root), "augment": {"crop_padding": 1}},
        "teachers": {"window": 2, "members": [{
            "name": "slow", "source": str(teacher), "format": "state_dict", "arch": ARCH,
            "arch_options": {"delay": 0.02}, "hints": ["body"], "resources": {"num_cpus": 0.1}}],
            "serving": {"min_replicas": 1, "max_replicas": 2, "interval_s": 0.5, "max_batch": 128, "max_wait_ms": 5}},
        "student": {"arch": "mobilenet_v1", "variant": "cifar", "options": {"alpha": 0.25}},
        "loss": {"terms": [{"type": "ce", "weight": 0.3}, {"type": "kd", "weight": 0.7, "temperature": 4.0}]},
        "trainer": {"epochs": 1, "steps_per_epoch": 10, "batch_size": 32, "deepspeed_stage": 2, "lr": 0.05},
        "cluster": {"num_workers": 1, "cpus_per_worker": 1},
        "logging": {"tensorboard": str(tmp_path / "tb"), "log_every_n_steps": 2},
        "output": {"dir": str(tmp_path / "run")}}


def _distill(*args: str, **kw):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "distill.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def _read_address(proc, timeout_s: float = 240.0) -> tuple[str, list[str]]:
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("address: "):
            return line.split()[1], lines
    raise AssertionError("distill serve printed no address:\n" + "".join(lines))


@pytest.mark.slow
def test_shared_service_e2e(tmp_path, digits_root, slow_teacher):
    """`distill serve` in the foreground (embedded Ray), two `distill run` processes attached to it at the
    same time, `distill status --service`, then `distill serve --stop`: both jobs train and report, the
    service saw both, and it ends cleanly."""
    import yaml

    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(_job_doc(tmp_path, digits_root, slow_teacher)))
    serve = _distill("serve", str(spec), "--name", "shared", "--num-cpus", "6")
    try:
        address, lines = _read_address(serve)
        assert address.startswith("127.0.0.1:")  # loopback only
        # No --address: a job on a service joins `auto`, Ray's way to a local head (its token included),
        # which the foreground service wrote as this machine's current cluster.
        jobs = [_distill("run", str(spec), "--set", f"name=job{i}", "--set",
                         "teachers.service=shared", "--set", f"output.dir={tmp_path / f'run{i}'}") for i in (1, 2)]
        outs = [job.communicate(timeout=600)[0] for job in jobs]
        for job, out in zip(jobs, outs, strict=True):
            assert job.returncode == 0, out[-3000:]
        status = _distill("status", "--service", "shared")
        shown = status.communicate(timeout=120)[0]
        assert status.returncode == 0 and "slow" in shown and "job1" in shown and "job2" in shown, shown
        stop = _distill("serve", "--stop", "shared")
        stopped = stop.communicate(timeout=120)[0]
        assert "teacher service 'shared' stopped" in stopped and stop.returncode == 0, stopped[-2000:]
        rest = serve.communicate(timeout=120)[0]
        assert serve.returncode == 0 and "teacher service stopped" in rest, "".join(lines) + rest
    finally:
        if serve.poll() is None:  # a failure above: end the service and its embedded Ray, by process group
            os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(timeout=90)
            except Exception:  # noqa: BLE001
                os.killpg(serve.pid, signal.SIGKILL)
    for i in (1, 2):
        report = (tmp_path / f"run{i}" / "report.json")
        assert report.is_file()
        tags = set(load_events(tmp_path / "tb" / f"job{i}").Tags()["scalars"])
        assert "teachers/latency_p50_ms" in tags and "teachers/replicas/slow" in tags, tags
    service_tags = set(load_events(tmp_path / "tb" / "service-shared").Tags()["scalars"])
    assert {"service/wait_ms_per_step/job1", "service/wait_ms_per_step/job2"} <= service_tags, service_tags


def _requested_bundles(ray) -> list[dict]:
    """The resource request the autoscaler would read, as Ray stored it (v1: internal KV; v2: GCS state)."""
    import json

    from ray.autoscaler.v2.utils import is_autoscaler_v2

    if is_autoscaler_v2():
        from ray.autoscaler.v2.sdk import get_cluster_resource_state

        state = get_cluster_resource_state(ray._private.worker.global_worker.gcs_client)
        return [dict(b.resources_bundle) for c in state.cluster_resource_constraints
                for r in c.resource_requests for b in [r.request] * r.count]
    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(raw) if raw else []


def test_replica_that_does_not_fit_asks_the_autoscaler(ray_session, slow_teacher):
    """A replica no node can take (its label selector matches none): without an autoscaler the service
    says so and gives up; with one it asks for the bundle (request_resources) instead of failing."""
    from ray.autoscaler.sdk import request_resources

    resources = [ReplicaResources(num_cpus=0.25, labels={"distill-test-zone": "nowhere"})]
    scaling = ScalingConfig(placement_wait_s=1.0, interval_s=0.25)
    with pytest.raises(ray_session.exceptions.RayActorError, match="no autoscaler"):
        start_service("nofit", [slow_config(slow_teacher, 0.0)], resources, [1], scaling, namespace="distill-tests")
    try:
        with pytest.raises(ray_session.exceptions.RayActorError, match="asked the autoscaler"):
            start_service("nofit2", [slow_config(slow_teacher, 0.0)], resources, [1], scaling,
                          namespace="distill-tests", autoscaler=True)
        assert {"CPU": 0.25} in _requested_bundles(ray_session)
    finally:
        request_resources(bundles=[])  # the request persists in the GCS: withdraw it


def test_bad_service_input_is_one_line(ray_session, tmp_path, digits_root, slow_teacher):
    """No CONFIG and no --stop, min above max, a job naming a service that is not there, and a service
    that lacks the job's hints: each is one line naming what is wrong."""
    import subprocess
    import sys

    from cluster.placement import ClusterError
    from distill.driver.stages import attach_service
    from distill.spec import SpecError, parse_spec

    proc = subprocess.run([sys.executable, "-m", "distill", "serve"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: distill serve: give a CONFIG to serve, or --stop NAME"
    doc = _job_doc(tmp_path, digits_root, slow_teacher)
    doc["teachers"]["serving"].update(min_replicas=3, max_replicas=2)
    with pytest.raises(SpecError, match="teachers.serving: .*max_replicas 2 < min_replicas 3"):
        parse_spec(doc)
    doc = _job_doc(tmp_path, digits_root, slow_teacher)
    doc["teachers"]["service"] = "absent"
    doc["cluster"]["namespace"] = "distill-tests"
    with pytest.raises(ClusterError, match="teachers.service: no teacher service 'absent' in namespace 'distill-tests'"):
        attach_service(parse_spec(doc))
    controller = _service("nohints", slow_teacher, 0.0, ScalingConfig())
    try:
        doc["teachers"]["service"] = "nohints"
        with pytest.raises(SpecError, match=r"does not return slow hints \['body'\]"):
            attach_service(parse_spec(doc))
    finally:
        stop_service(controller)
