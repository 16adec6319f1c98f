"""The teacher service against a real local Ray: wire encoding, ensembles, actors, balancing,
pipelining and fault tolerance.

Teachers here are a small ``module:callable`` arch written next to its weights
(as users ship them) that can sleep a set time per batch, so latency is known
without burning the shared CPUs. Faults are real: the actor's process is
SIGKILLed (or ``ray.kill``-ed) in the middle of a job, and every batch must
still get its soft labels exactly once, equal to a direct forward.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from teachers.client import Prefetcher, TeacherPool, TeacherUnavailableError
from teachers.ensemble import combine_probs
from teachers.hints import capture_hints
from teachers.load import load_teacher
from teachers.service import TeacherConfig, decode_logits, encode_logits, start_replicas, stop_replicas

SHARED = Path(__file__).parents[2] / "shared" / "teachers" / "cifar10"
SHARED_HINTS = {"resnet20": ["layer1", "layer2", "layer3"],
                "vgg_small": ["features.6", "features.13", "features.20"]}

SLOW_ARCH = textwrap.dedent('''
    import time

    from torch import nn


    class Slow(nn.Module):
        """A small MLP that sleeps ``delay`` seconds per batch: a teacher of known latency."""

        def __init__(self, num_classes=10, in_chans=1, image_size=8, delay=0.0):
            super().__init__()
            self.delay = delay
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size ** 2, 32), nn.ReLU())
            self.head = nn.Linear(32, num_classes)

        def forward(self, x):
            if self.delay:
                time.sleep(self.delay)
            return self.head(self.body(x))
''')


@pytest.fixture(scope="module")
def slow_teacher(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slow_teacher")
    (folder / "slow_arch.py").write_text(SLOW_ARCH)
    ns: dict = {}
    exec(SLOW_ARCH, ns)  # noqa: S102 - the same source the actors import
    torch.manual_seed(0)
    torch.save(ns["Slow"]().state_dict(), folder / "slow.pt")
    return folder / "slow.pt"


def slow_config(path: Path, delay: float, output: str = "fp16", topk: int = 0,
                hints: list[str] | None = None, arch: str = "slow_arch:Slow") -> TeacherConfig:
    return TeacherConfig(name="slow", source=str(path), format="state_dict", arch=arch,
                         arch_options={"delay": delay}, output=output, topk=topk, hints=hints or [],
                         num_classes=10, input_shape=(1, 8, 8))


def keyed_batches(n: int, size: int = 16, seed: int = 0) -> list[tuple]:
    """``n`` batches ``(x, y, keys)`` of fixed random digits-sized inputs, keys unique across batches."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g),
             [f"b{i:03d}-{j:02d}" for j in range(size)]) for i in range(n)]


def direct_logits(path: Path, x: torch.Tensor, arch: str = "slow_arch:Slow") -> torch.Tensor:
    model = load_teacher(path, "state_dict", arch=arch)
    with torch.inference_mode():
        return model(x)


def test_inprocess_teachers_answer_like_an_actor(slow_teacher):
    """mode: inprocess runs the actors' body in the training worker: same logits, hints, order."""
    from teachers.inprocess import InProcessTeachers

    batches = keyed_batches(3)
    torch.set_num_threads(2)
    teachers = InProcessTeachers(batches, [slow_config(slow_teacher, 0.0, output="fp32", hints=["body"])],
                                 length=3)
    assert torch.get_num_threads() == 2  # the worker's threads are left alone
    seen = list(teachers)
    assert len(seen) == len(teachers) == 3
    for (batch, out), (x, _, keys) in zip(seen, batches, strict=True):
        assert batch[2] == keys
        torch.testing.assert_close(out.logits[0], direct_logits(slow_teacher, x), rtol=0, atol=0)
        assert out.hints[0]["body"].shape == (16, 32)
    assert teachers.wait_s > 0
    assert teachers.drain_stats().metrics()["teachers/student_wait_ms_per_step"] == pytest.approx(
        1000 * teachers.wait_s / 3)
    assert teachers.drain_stats().metrics()["teachers/student_wait_ms_per_step"] == 0  # nothing since


# ---------------------------------------------------------------- wire format and ensembles (no Ray)

def test_encode_decode_logits():
    z = torch.randn(5, 12) * 4
    torch.testing.assert_close(decode_logits(encode_logits(z, "fp32", 0)), z, rtol=0, atol=0)
    half = encode_logits(z, "fp16", 0)
    assert half["logits"].dtype == np.float16
    torch.testing.assert_close(decode_logits(half), z.half().float(), rtol=0, atol=0)

    top = encode_logits(z, "topk", 3)
    assert top["topk_values"].dtype == np.float16 and top["topk_indices"].dtype == np.int16
    back = decode_logits(top)
    idx = z.topk(3, dim=1).indices
    torch.testing.assert_close(back.gather(1, idx), z.gather(1, idx).half().float(), rtol=0, atol=0)
    rest = torch.ones_like(z, dtype=torch.bool).scatter_(1, idx, False)
    assert (back[rest] == -1e4).all()
    # softmax of the decoded top-k is the teacher's distribution renormalised over its top k
    p = torch.softmax(z, 1)
    ptop = p.gather(1, idx) / p.gather(1, idx).sum(1, keepdim=True)
    torch.testing.assert_close(torch.softmax(back, 1).gather(1, idx), ptop, rtol=2e-3, atol=2e-3)
    assert encode_logits(torch.randn(2, 40000), "topk", 4)["topk_indices"].dtype == np.int32
    assert encode_logits(z, "topk", 50)["topk_values"].shape == (5, 12)  # k capped at the class count


def test_ensemble_rules_and_weights():
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    w = [3.0, 1.0]
    expected = (3 * torch.softmax(a / 2, 1) + torch.softmax(b / 2, 1)) / 4
    torch.testing.assert_close(combine_probs([a, b], w, 2.0, "mean_probs"), expected)
    expected = torch.softmax((3 * a + b) / 4 / 2, 1)
    torch.testing.assert_close(combine_probs([a, b], w, 2.0, "mean_logits"), expected)
    torch.testing.assert_close(combine_probs([a], [5.0], 1.0), torch.softmax(a, 1))
    with pytest.raises(ValueError, match="unknown ensemble rule"):
        combine_probs([a], [1.0], rule="median")
    with pytest.raises(ValueError, match="at least one"):
        combine_probs([], [])


# ---------------------------------------------------------------- actors

@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared CIFAR-10 teachers not found at {SHARED}")
def test_shared_teachers_every_format_in_actors(ray_session):
    """Each format, and each shared teacher, served by an actor: logits and hints equal a direct forward.

    Three actors (a Latin square: every format once, every teacher once) rather than nine:
    loading itself is covered for all nine pairs by ``test_teacher_load``; what the actor adds
    (a fresh process, the object store, fp16 hints on the wire) is the same for each pair.
    """
    files = {"state_dict": "{}.state_dict.pt", "torchscript": "{}.torchscript.pt", "export": "{}.pt2"}
    pairs = [("resnet20_a", "export"), ("vgg_small_a", "torchscript"), ("resnet20_b", "state_dict")]
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    started = []
    for name, fmt in pairs:
        paths = SHARED_HINTS[name.rsplit("_", 1)[0]]
        config = TeacherConfig(name=f"{name}-{fmt}", source=str(SHARED / files[fmt].format(name)), format=fmt,
                               hints=paths, output="fp32", num_classes=10, input_shape=(3, 32, 32))
        started.append((name, fmt, paths, start_replicas(config, 1, num_cpus=0.1, max_restarts=0)))
    try:
        pool = TeacherPool([f"{n}-{f}" for n, f, _, _ in started], [h for *_, h in started])
        out = pool(x)
        refs = {}
        for i, (name, fmt, paths, _) in enumerate(started):
            if name not in refs:
                eager = load_teacher(SHARED / f"{name}.state_dict.pt", "state_dict", num_classes=10)
                with torch.inference_mode():
                    refs[name] = capture_hints(eager, x, paths)
            ref_logits, ref_hints = refs[name]
            torch.testing.assert_close(out.logits[i], ref_logits, rtol=1e-4, atol=1e-4, msg=f"{name} {fmt}")
            assert sorted(out.hints[i]) == sorted(paths)
            for path in paths:
                got = out.hints[i][path]
                assert got.dtype == torch.float16 and got.shape == ref_hints[path].shape
                torch.testing.assert_close(got.float(), ref_hints[path], rtol=2e-3, atol=2e-3,
                                           msg=f"{name} {fmt} hint {path}")
    finally:
        for *_, handles in started:
            stop_replicas(handles)


def test_topk_and_hints_through_actor(ray_session, slow_teacher):
    config = slow_config(slow_teacher, 0.0, output="topk", topk=3, hints=["body"])
    handles = start_replicas(config, 1, num_cpus=0.1)
    try:
        pool = TeacherPool(["slow"], [handles])
        x = keyed_batches(1)[0][0]
        out = pool(x)
        z = direct_logits(slow_teacher, x)
        idx = z.topk(3, dim=1).indices
        assert out.logits[0].shape == z.shape
        torch.testing.assert_close(out.logits[0].gather(1, idx), z.gather(1, idx), rtol=1e-3, atol=1e-3)
        assert out.hints[0]["body"].shape == (16, 32) and out.hints[0]["body"].dtype == torch.float16
    finally:
        stop_replicas(handles)


@pytest.fixture(scope="module")
def fast_and_slow(ray_session, slow_teacher):
    """Two fast replicas (10 ms a batch) and a slow one (300 ms), for the balancing and window tests."""
    fast = start_replicas(slow_config(slow_teacher, 0.01), 2, num_cpus=0.1)
    slow = start_replicas(slow_config(slow_teacher, 0.3), 1, num_cpus=0.1)
    yield fast, slow
    stop_replicas(fast + slow)


def test_least_outstanding_spreads_load(fast_and_slow):
    """Equal replicas share a pipelined stream evenly; a slow replica gets less than a fast one."""
    fast, slow = fast_and_slow
    batches = keyed_batches(24)
    pool = TeacherPool(["slow"], [fast])
    for _ in Prefetcher(batches, pool, window=4):
        pass
    served = pool.drain_stats().replica_served
    assert set(served) == {"slow_0", "slow_1"} and sum(served.values()) == 24 * 16
    assert abs(served["slow_0"] - served["slow_1"]) <= 4 * 16, served

    pool = TeacherPool(["slow"], [[fast[0], slow[0]]])
    for _ in Prefetcher(batches, pool, window=6):
        pass
    served = pool.drain_stats().replica_served
    assert served["slow_0"] >= 2 * served["slow_1"] > 0, served


def test_window_hides_teacher_latency(fast_and_slow):
    """With W batches in flight the student barely waits; synchronous calls wait the full latency."""
    delay = 0.3
    _, slow = fast_and_slow
    batches = keyed_batches(8)
    pool = TeacherPool(["slow"], [slow])
    pool(batches[0][0])  # warm up
    pool.drain_stats()
    for _ in Prefetcher(batches, pool, window=3):
        time.sleep(delay)  # the student's step, as long as the teacher's
    piped = pool.drain_stats()
    for batch in batches:
        pool(batch[0])
        time.sleep(delay)
    sync = pool.drain_stats()
    assert sync.wait_s / len(batches) > 0.8 * delay
    # the first batch waits a full latency to fill the window, the rest almost nothing
    assert piped.wait_s / len(batches) < 0.4 * delay, (piped.wait_s, sync.wait_s)
    metrics = piped.metrics()
    assert metrics["teachers/window_occupancy"] > 0.6
    assert metrics["teachers/latency_p50_ms"] >= 1000 * delay
    assert 0.5 < metrics["teachers/busy_fraction/slow_0"] <= 1.0


def _run_with_fault(pool: TeacherPool, batches: list, kill_after: int, kill, window: int = 4) -> list:
    seen = []
    for i, ((x, _y, keys), out) in enumerate(Prefetcher(batches, pool, window=window)):
        seen.append((keys, x, out))
        if i == kill_after:
            kill()
    return seen


def _check_exactly_once(seen: list, batches: list, path: Path) -> None:
    keys = [k for keys, _, _ in seen for k in keys]
    assert keys == [k for b in batches for k in b[2]]  # every batch once, in order, none twice
    for _keys, x, out in seen:
        torch.testing.assert_close(out.logits[0], direct_logits(path, x).half().float(), rtol=1e-3, atol=1e-3)


def _settle(pool: TeacherPool, until, timeout_s: float = 60.0):
    """Drain stats (probes settle as they do) until ``until(total)`` or the timeout; returns the sum."""
    total = pool.drain_stats()
    deadline = time.monotonic() + timeout_s
    while not until(total) and time.monotonic() < deadline:
        time.sleep(0.2)
        more = pool.drain_stats()
        total.failures += more.failures
        total.restarts += more.restarts
        total.dead_replicas = more.dead_replicas
    return total


def test_actors_killed_mid_job(ray_session, slow_teacher):
    """Every fault in turn, on one pair of actors with one restart each; every batch answered exactly once.

    1. SIGKILL replica 0: its requests go to replica 1; Ray restarts 0 and the pool sees it back.
    2. ``ray.kill`` the lone replica of a one-replica pool: its requests wait for the restarted actor.
    3. Replica 0 dies with no restart left: the job goes on with replica 1; 0 counts as dead.
    4. Replica 1 dies too: one clear error, not a hang.
    """
    pair = start_replicas(slow_config(slow_teacher, 0.03), 2, num_cpus=0.1, max_restarts=1)
    try:
        pool = TeacherPool(["slow"], [pair])
        victim = pool.teams[0].pid[0]
        batches = keyed_batches(24)
        seen = _run_with_fault(pool, batches, 6, lambda: os.kill(victim, signal.SIGKILL))
        _check_exactly_once(seen, batches, slow_teacher)
        stats = _settle(pool, lambda s: s.restarts >= 1)
        assert stats.failures == 1 and stats.restarts == 1 and stats.dead_replicas == 0, stats
        assert pool.teams[0].pid[0] != victim and pool.teams[0].state == ["up", "up"]

        lone = TeacherPool(["slow"], [pair[1:]])
        batches = keyed_batches(16, seed=1)
        seen = _run_with_fault(lone, batches, 4, lambda: ray_session.kill(pair[1], no_restart=False))
        _check_exactly_once(seen, batches, slow_teacher)
        stats = lone.drain_stats()
        assert stats.failures == 1 and stats.retries >= 1 and stats.restarts == 1, stats
        assert stats.metrics()["teachers/restarts"] == 1.0

        pool = TeacherPool(["slow"], [pair])
        batches = keyed_batches(12, seed=2)
        seen = _run_with_fault(pool, batches, 2, lambda: os.kill(pool.teams[0].pid[0], signal.SIGKILL), 3)
        _check_exactly_once(seen, batches, slow_teacher)
        stats = _settle(pool, lambda s: pool.teams[0].state[0] == "dead")
        assert stats.failures == 1 and stats.restarts == 0 and stats.dead_replicas == 1, stats

        ray_session.kill(pair[1], no_restart=True)
        started = time.monotonic()
        with pytest.raises(TeacherUnavailableError, match="teacher 'slow': all 2 replica"):
            for _ in Prefetcher(batches, pool, window=3):
                pass
        assert time.monotonic() - started < 30
    finally:
        stop_replicas(pair)
