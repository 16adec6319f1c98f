"""A real two-node Ray cluster on this machine, a job across it, and failures survived.

Two network namespaces joined by a veth pair stand in for two machines (Ray
on one host puts every node on one address; separate network stacks give it
two). The head node offers ``teacher_node`` and the worker node
``student_node`` plus the label ``role=student``; every process runs with
``RAY_AUTH_MODE=token`` and one shared ``RAY_AUTH_TOKEN``. The job is
submitted with ``distill launch`` from inside the head's namespace, so the
run itself goes through Ray Jobs, ``--address auto``, the placement checks and
the shared-storage probe. Ray's state API shows where the actors landed;
then a student worker and a teacher replica are killed with SIGKILL and the
job must still finish with every step trained (Ray Train restarts the worker
group from the last checkpoint; Ray restarts the teacher actor).

Two shorter jobs run first on the same cluster, driven by ``distill run
--address``: one with a student worker on each node (``STRICT_SPREAD``) and a
teacher on each, which only trains if gloo listens on the veth interface and
not on the loopback the hostname resolves to; and ``configs/demo.yaml`` as it
is (nothing pinned), with only its paths and length overridden.

Every process the test starts runs in a process group of its own and is ended
by that group; the namespaces are deleted at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
EPOCHS, STEPS = 4, 8


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    probe = f"dmprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if made.returncode != 0:
        return f"cannot create network namespaces: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_SKIP = _can_make_namespaces()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]


class TwoNodes:
    """Head in namespace ``a`` (teacher_node), worker node in namespace ``b`` (student_node)."""

    def __init__(self, workdir: Path) -> None:
        tag = os.getpid()
        self.ns = (f"dm{tag}a", f"dm{tag}b")
        self.veth = (f"dmv{tag}a", f"dmv{tag}b")
        net = f"10.{100 + tag % 100}.{tag // 100 % 250}"
        self.ips = (f"{net}.1", f"{net}.2")
        self.gcs = f"{self.ips[0]}:6379"
        self.dashboard = f"http://{self.ips[0]}:8265"
        self.tmp = (Path(f"/tmp/dm{tag}h"), Path(f"/tmp/dm{tag}w"))  # short: Ray's socket paths
        self.logs = workdir
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_USAGE_STATS_ENABLED": "0",
                    "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", "DS_ACCELERATOR": "cpu",
                    "OMP_NUM_THREADS": "1", "RAY_ADDRESS": self.gcs, "PYTHONPATH": str(ROOT)}

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def start(self) -> None:
        for ns in self.ns:
            self._ip("netns", "add", ns)
        self._ip("link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1])
        for ns, veth, ip in zip(self.ns, self.veth, self.ips, strict=True):
            self._ip("link", "set", veth, "netns", ns)
            self._ip("-n", ns, "addr", "add", f"{ip}/24", "dev", veth)
            self._ip("-n", ns, "link", "set", "lo", "up")
            self._ip("-n", ns, "link", "set", veth, "up")
        common = ["--num-cpus=2", "--object-store-memory=100000000", "--disable-usage-stats", "--block"]
        self._spawn(0, ["--head", f"--node-ip-address={self.ips[0]}", "--port=6379",
                        "--dashboard-host=0.0.0.0", f"--temp-dir={self.tmp[0]}",
                        '--resources={"teacher_node": 4}', '--labels={"role": "teacher"}', *common])
        self._spawn(1, [f"--address={self.gcs}", f"--node-ip-address={self.ips[1]}",
                        f"--temp-dir={self.tmp[1]}", '--resources={"student_node": 4}',
                        '--labels={"role": "student"}', *common])
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if sum(n["state"] == "ALIVE" for n in self.state(tries=1)["nodes"]) == 2:
                    print(f"[{time.monotonic() - _T0:6.1f} s] two nodes up", flush=True)
                    return
            except (subprocess.CalledProcessError, json.JSONDecodeError):
                pass
            time.sleep(2)
        raise RuntimeError(f"two-node cluster did not come up; see {self.logs}/node*.log")

    def _spawn(self, i: int, args: list[str]) -> None:
        log = open(self.logs / f"node{i}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(["ip", "netns", "exec", self.ns[i], str(VENV_BIN / "ray"), "start",
                                            *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def run(self, argv: list[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside the head's namespace (where the cluster's addresses are reachable)."""
        return subprocess.run(["ip", "netns", "exec", self.ns[0], *argv], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=check, cwd=ROOT)

    def run_all(self, argvs: list[list[str]], timeout: float = 300) -> list[tuple[str, str]]:
        """Run commands side by side inside the head's namespace; their (stdout, stderr), in order."""
        pipe = subprocess.PIPE
        procs = [subprocess.Popen(["ip", "netns", "exec", self.ns[0], *argv], env=self.env, cwd=ROOT,
                                  text=True, stdout=pipe, stderr=pipe) for argv in argvs]
        return [p.communicate(timeout=timeout) for p in procs]

    def state(self, tries: int = 3) -> dict:
        """Nodes and actors from Ray's state API (retried: the dashboard can be slow on a busy machine)."""
        for attempt in range(tries):
            out = self.run([sys.executable, str(ROOT / "tests" / "scripts" / "ray_state.py")], timeout=180,
                           check=attempt == tries - 1)
            if out.returncode == 0:
                return json.loads(out.stdout.strip().splitlines()[-1])
            time.sleep(2)
        raise AssertionError("unreachable")

    def distill(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return self.run([str(VENV_BIN / "distill"), *args], timeout=timeout, check=check)

    def stop(self) -> None:
        for p in self.procs:  # each `ray start --block` leads its own process group
            _end_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5  # a node drains for up to 30 s on SIGTERM; no need here
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _end_group(p.pid, signal.SIGKILL)
            p.wait()
        for ns in self.ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for i, tmp in enumerate(self.tmp):  # keep the nodes' logs (job driver, workers) for a post-mortem
            if (tmp / "session_latest" / "logs").is_dir():
                shutil.copytree(tmp / "session_latest" / "logs", self.logs / f"node{i}-logs",
                                dirs_exist_ok=True, ignore_dangling_symlinks=True)
            shutil.rmtree(tmp, ignore_errors=True)


def _end_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    cluster = TwoNodes(tmp_path_factory.mktemp("two_nodes"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """The two digits teachers as untrained state dicts: this test is about placement and recovery, not
    accuracy (test_e2e covers learning), and training them costs most of a minute on a busy machine."""
    import torch

    from teachers.archs import create_teacher

    folder = tmp_path_factory.mktemp("teachers")
    for name in ("cnn", "mlp"):
        torch.manual_seed(0)
        model = create_teacher(f"digits_{name}", num_classes=10, in_chans=1)
        torch.save(model.state_dict(), folder / f"{name}.pt")
    return folder


def job_doc(tmp_path: Path, digits_root: Path, teachers: Path) -> dict:
    """A tiny digits job; teachers pinned to the head (one by a custom resource, one by a node label),
    student workers to the other node (custom resource and label)."""
    return {
        "name": "multinode",
        "data": {"source": str(digits_root), "augment": {"crop_padding": 1}},
        "teachers": {"members": [
            {"name": "cnn", "source": str(teachers / "cnn.pt"), "arch": "digits_cnn", "format": "state_dict",
             "resources": {"num_cpus": 0.25, "custom": {"teacher_node": 1}}},
            {"name": "mlp", "source": str(teachers / "mlp.pt"), "arch": "digits_mlp", "format": "state_dict",
             "resources": {"num_cpus": 0.25, "labels": {"role": "teacher"}}}]},
        "student": {"arch": "mobilenet_v1", "options": {"alpha": 0.25}},
        "loss": {"terms": [{"type": "ce", "weight": 0.3}, {"type": "kd", "weight": 0.7, "temperature": 4.0}]},
        "trainer": {"epochs": EPOCHS, "steps_per_epoch": STEPS, "batch_size": 32, "lr": 0.1,
                    "deepspeed_stage": 2},
        "cluster": {"num_workers": 2, "cpus_per_worker": 1, "worker_resources": {"student_node": 1},
                    "worker_labels": {"role": "student"}, "max_failures": 2, "placement_timeout_s": 120},
        "logging": {"tensorboard": str(tmp_path / "tb"), "log_every_n_steps": 2},
        "output": {"dir": str(tmp_path / "run")},
    }


_T0 = time.monotonic()


def _wait(what: str, predicate, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            print(f"[{time.monotonic() - _T0:6.1f} s] {what}", flush=True)  # where the time goes (-s)
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _alive(state: dict, cls: str) -> list[dict]:
    return [a for a in state["actors"] if a["class"] == cls and a["state"] == "ALIVE"]


def _check_feasibility_on(nodes: list[dict], doc: dict) -> None:
    """The pre-start check, on this cluster's real nodes: the job fits; twice the workers' share cannot."""
    from cluster.placement import ClusterError, Node, check_feasible
    from distill.driver.scheduling import demands
    from distill.spec import parse_spec

    live = [Node(n["ip"], n["resources"], n["labels"]) for n in nodes if n["state"] == "ALIVE"]
    check_feasible(demands(parse_spec(doc)), live)
    doc = json.loads(json.dumps(doc))
    doc["cluster"]["worker_resources"] = {"student_node": 3}  # 2 workers x 3 > the node's 4
    with pytest.raises(ClusterError, match=r"^cluster: 2 x \{CPU: 1, student_node: 3\} needs"):
        check_feasible(demands(parse_spec(doc)), live)
    doc["cluster"]["worker_labels"] = {"role": "teacher"}  # no teacher node has student_node
    with pytest.raises(ClusterError, match=r"no node has that"):
        check_feasible(demands(parse_spec(doc)), live)


def _global_step(ckpt: Path) -> int:
    """Lightning's global step stored in a (DeepSpeed folder or plain) checkpoint."""
    import torch

    files = [ckpt] if ckpt.is_file() else sorted(ckpt.rglob("mp_rank_00_model_states.pt"))
    return int(torch.load(files[0], map_location="cpu", weights_only=False)["global_step"])


SHORT_EPOCHS, SHORT_STEPS = 2, 3


def _run_here(two_nodes: TwoNodes, argv: list[str]) -> subprocess.CompletedProcess:
    """``distill run ... --address <gcs>`` from the head's namespace; must succeed with no traceback."""
    run = two_nodes.distill("run", *argv, "--address", two_nodes.gcs, timeout=600, check=False)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    print(f"[{time.monotonic() - _T0:6.1f} s] {argv[0]} done", flush=True)
    return run


def _new_actors(two_nodes: TwoNodes, cls: str, before: set[str]) -> list[dict]:
    return [a for a in two_nodes.state()["actors"] if a["class"] == cls and a["id"] not in before]


def test_student_workers_on_two_nodes_train_together(two_nodes, tmp_path, digits_root, teacher_dir):
    """One Ray Train worker per node, one teacher per node: gloo must connect across the veth pair."""
    doc = job_doc(tmp_path, digits_root, teacher_dir)
    doc["teachers"]["members"][1]["resources"] = {"num_cpus": 0.25, "labels": {"role": "student"}}
    doc["trainer"].update(epochs=SHORT_EPOCHS, steps_per_epoch=SHORT_STEPS)
    doc["cluster"] = {"num_workers": 2, "cpus_per_worker": 1, "placement_strategy": "STRICT_SPREAD",
                      "placement_timeout_s": 120}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    state = two_nodes.state()
    before = {a["id"] for a in state["actors"]}
    both = {n["id"] for n in state["nodes"] if n["state"] == "ALIVE"}

    _run_here(two_nodes, [str(tmp_path / "job.yaml")])
    assert {a["node"] for a in _new_actors(two_nodes, "RayTrainWorker", before)} == both
    assert {a["node"] for a in _new_actors(two_nodes, "TeacherWorker", before)} == both
    assert _global_step(tmp_path / "run" / "checkpoints" / "last.ckpt") == SHORT_EPOCHS * SHORT_STEPS
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert 0.0 <= report["student"]["top1"] <= 1.0 and report["teachers"]


def test_demo_spec_unpinned_runs_on_the_cluster(two_nodes, tmp_path, digits_root, teacher_dir):
    """configs/demo.yaml as shipped (no resources, labels or strategy pinned), on the two-node cluster."""
    sets = {"data.source": digits_root, "teachers.members.0.source": teacher_dir / "cnn.pt",
            "teachers.members.1.source": teacher_dir / "mlp.pt", "trainer.epochs": SHORT_EPOCHS,
            "trainer.steps_per_epoch": SHORT_STEPS, "logging.tensorboard": tmp_path / "tb",
            "output.dir": tmp_path / "run"}
    _run_here(two_nodes, ["configs/demo.yaml", *(a for k, v in sets.items() for a in ("--set", f"{k}={v}"))])
    assert _global_step(tmp_path / "run" / "checkpoints" / "last.ckpt") == SHORT_EPOCHS * SHORT_STEPS
    assert json.loads((tmp_path / "run" / "report.json").read_text())["student"]["top1"] >= 0.0


def test_job_placed_across_nodes_survives_worker_and_teacher_kills(two_nodes, tmp_path, digits_root,
                                                                    teacher_dir):
    doc = job_doc(tmp_path, digits_root, teacher_dir)
    workdir = tmp_path / "wd"
    workdir.mkdir()
    (workdir / "job.yaml").write_text(yaml.safe_dump(doc))

    launched = two_nodes.distill("launch", str(workdir / "job.yaml"), "--working-dir", str(workdir),
                                 "--address", two_nodes.dashboard)
    job_id = launched.stdout.split()[0]
    assert job_id.startswith("raysubmit_"), launched.stdout + launched.stderr

    def status() -> str:  # the Jobs client alone: the full CLI imports too much to poll with
        code = f"from cluster import jobs; print(jobs.info({two_nodes.dashboard!r}, {job_id!r}).status.value)"
        out = two_nodes.run([sys.executable, "-c", code], timeout=180, check=False)
        return out.stdout.split()[-1] if out.returncode == 0 and out.stdout.split() else "UNKNOWN"

    done = False
    try:
        # Placement, seen through Ray's state API: teachers on the head, student workers on the other node.
        nodes = {n["labels"].get("role"): n["id"] for n in two_nodes.state()["nodes"]}

        def all_up() -> dict | None:
            s = two_nodes.state()
            up = len(_alive(s, "TeacherWorker")) == 2 and len(_alive(s, "RayTrainWorker")) == 2
            return s if up else None

        state = _wait("teachers and 2 student workers", all_up, timeout=360, every=2)
        assert {a["node"] for a in _alive(state, "TeacherWorker")} == {nodes["teacher"]}
        assert all(a["placement_group"] for a in _alive(state, "TeacherWorker"))  # reserved all-or-none
        _check_feasibility_on(state["nodes"], doc)
        assert {a["node"] for a in _alive(state, "RayTrainWorker")} == {nodes["student"]}

        # Kill a student worker the moment the first checkpoint is published (it appears complete: it is
        # renamed into place), so the kill lands mid-run however fast the machine is.
        last = tmp_path / "run" / "checkpoints" / "last.ckpt"
        _wait("the first checkpoint", lambda: last.exists(), timeout=300, every=0.2)
        os.kill(_alive(state, "RayTrainWorker")[0]["pid"], signal.SIGKILL)
        step_at_kill = _global_step(last)  # the survivor cannot checkpoint alone: this is the resume point

        # Ray Train starts a new worker group; then kill a teacher replica while training goes on.
        old = {a["pid"] for a in _alive(state, "RayTrainWorker")}

        def restarted() -> dict | None:
            s = two_nodes.state()
            return s if len({a["pid"] for a in _alive(s, "RayTrainWorker")} - old) == 2 else None

        state = _wait("a restarted worker group", restarted, timeout=300, every=2)
        teacher = _alive(state, "TeacherWorker")[0]
        os.kill(teacher["pid"], signal.SIGKILL)

        def ended() -> str | None:
            now = status()
            return now if now in ("SUCCEEDED", "FAILED", "STOPPED") else None

        _wait("the job to end", ended, timeout=480, every=3)
        done = True
    finally:
        if not done:
            two_nodes.distill("stop", job_id, "--address", two_nodes.dashboard, check=False)

    # The CLI's view of the job, its log and the actors' final state, side by side (each process start
    # costs seconds here; the log comes through the same client `distill logs` uses).
    logs = f"from cluster import jobs; jobs.logs({two_nodes.dashboard!r}, {job_id!r})"
    status_cmd = [str(VENV_BIN / "distill"), "status", job_id, "--address", two_nodes.dashboard]
    shown = two_nodes.run_all([status_cmd, [sys.executable, "-c", logs],
                               [sys.executable, str(ROOT / "tests" / "scripts" / "ray_state.py")]])
    (status_out, status_err), (logs_out, logs_err), (state_out, _) = shown
    assert status_out.startswith(f"{job_id}: SUCCEEDED"), status_out + status_err + logs_out[-3000:]
    assert f"resuming from {last}" in logs_out, logs_out[-3000:] + logs_err
    assert step_at_kill >= STEPS
    assert _global_step(last) == EPOCHS * STEPS  # nothing lost, nothing trained twice past the end
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert 0.0 <= report["student"]["top1"] <= 1.0
    # The killed teacher was restarted by Ray (in its placement-group bundle) and the job went on.
    actors = json.loads(state_out.strip().splitlines()[-1])["actors"]
    (after,) = [a for a in actors if a["id"] == teacher["id"]]
    assert after["restarts"] >= 1, after
