"""Placement demands and checks, restart-resume decisions, and the Ray Jobs CLI's one-line errors.

No Ray here: the feasibility check runs on node descriptions like the ones
``ray.nodes()`` returns (tests/test_multinode.py runs it on a real cluster).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cluster.placement import ClusterError, Demand, Node, check_feasible
from cluster.train import fingerprint, resume_checkpoint
from distill.driver.scheduling import demands, embedded_extras
from distill.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"

HEAD = Node("10.0.0.1", {"CPU": 4.0, "teacher_node": 2.0, "memory": 1e9}, {"role": "teacher"})
GPU = Node("10.0.0.2", {"CPU": 8.0, "GPU": 1.0, "student_node": 4.0}, {"role": "student", "gpu": "l4"})


def test_spec_becomes_one_demand_per_teacher_and_one_for_workers():
    spec = load_spec(DEMO, ["teachers.members.0.resources.custom={teacher_node: 1}",
                            "teachers.members.1.resources.labels={role: teacher}",
                            "teachers.members.1.replicas=2", "cluster.worker_resources={student_node: 1}",
                            "cluster.worker_labels={role: student}", "cluster.placement_strategy=SPREAD"])
    cnn, mlp, workers = demands(spec)
    assert (cnn.where, cnn.bundle, cnn.count) == ("teachers.members.0.resources",
                                                  {"CPU": 0.5, "teacher_node": 1.0}, 1)
    assert (mlp.bundle, mlp.count, mlp.labels) == ({"CPU": 0.5}, 2, {"role": "teacher"})
    assert (workers.bundle, workers.count, workers.labels, workers.strategy) == (
        {"CPU": 1.0, "student_node": 1.0}, 2, {"role": "student"}, "SPREAD")
    check_feasible([cnn, mlp, workers], [HEAD, GPU])
    # One machine gets what the spec asks for: 3 teacher replicas x 0.5 CPU + 2 workers x 1 CPU.
    assert embedded_extras(spec) == {"num_cpus": 3.5, "resources": {"teacher_node": 1.0, "student_node": 2.0},
                                     "labels": {"role": "teacher"}}


@pytest.mark.parametrize("demand, message", [
    (Demand("teachers.members.0.resources", {"CPU": 1, "GPU": 2}), "needs {CPU: 1, GPU: 2} on one node"),
    (Demand("cluster", {"CPU": 1}, 2, {"gpu": "a100"}), "with labels {'gpu': 'a100'}, but no node has that"),
    (Demand("cluster", {"CPU": 1, "student_node": 3}, 2), "2 x {CPU: 1, student_node: 3} needs {CPU: 2, "
                                                         "student_node: 6}, the matching nodes have"),
    (Demand("cluster", {"CPU": 1}, 3, strategy="STRICT_SPREAD"), "STRICT_SPREAD needs 3 nodes"),
])
def test_impossible_demands_fail_with_one_line_naming_the_field(demand, message):
    with pytest.raises(ClusterError) as err:
        check_feasible([demand], [HEAD, GPU])
    text = str(err.value)
    assert text.startswith(demand.where + ":") and message in text and "\n" not in text, text
    assert "memory" not in text  # Ray's bookkeeping resources stay out of the message


def test_groups_that_fit_alone_but_not_together_are_refused():
    teachers = Demand("teachers.members.0.resources", {"CPU": 0.25, "GPU": 0.5}, 2)  # fractional GPUs
    check_feasible([teachers], [HEAD, GPU])
    workers = Demand("cluster", {"CPU": 1, "GPU": 0.5}, 1)
    with pytest.raises(ClusterError, match=r"^cluster: the job needs .*GPU: 1.5.* short of \{GPU: 1.5\}"):
        check_feasible([teachers, workers], [HEAD, GPU])


def test_restart_resumes_only_from_a_checkpoint_this_run_wrote(tmp_path):
    last = tmp_path / "last.ckpt"
    assert resume_checkpoint(None, resume=True, at_start=None) is None
    (last / "checkpoint").mkdir(parents=True)  # DeepSpeed writes a folder
    (last / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"old")
    stale = fingerprint(last)
    # A first attempt sees the checkpoint an earlier run left: ignored unless --resume.
    assert resume_checkpoint(str(last), resume=False, at_start=stale) is None
    assert resume_checkpoint(str(last), resume=True, at_start=stale) == str(last)
    time.sleep(0.01)
    (last / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"new, written by this run")
    # After a Ray Train restart the checkpoint differs from the one at start: resume from it.
    assert resume_checkpoint(str(last), resume=False, at_start=stale) == str(last)
    assert resume_checkpoint(str(last), resume=False, at_start=None) == str(last)


def test_launch_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from distill.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    outside = tmp_path / "job.yaml"
    outside.write_text(DEMO.read_text())
    nowhere = "http://127.0.0.1:9"
    assert main(["launch", str(outside), "--address", nowhere]) == 2
    assert capsys.readouterr().err.startswith(f"error: {outside}: the job spec must be inside")
    assert main(["launch", str(outside), "--working-dir", str(tmp_path), "--address", nowhere]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"error: --address {nowhere}: cannot reach")
    assert main(["status", "raysubmit_nothing", "--address", nowhere]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --address {nowhere}: cannot reach") and err.count("\n") == 1, err


def _never_called(config: dict) -> None:
    raise AssertionError("workers must not start while their resources are held")


@pytest.mark.slow
def test_busy_cluster_waits_then_fails_with_one_line(ray_session, tmp_path):
    """Resources that exist but are held: teachers and Ray Train workers wait, then stop with one line."""
    from cluster.placement import release, reserve
    from cluster.train import fit

    cpus = ray_session.cluster_resources()["CPU"]
    holder = reserve(Demand("test", {"CPU": cpus}), timeout_s=30)
    try:
        where = "teachers.members.0.resources"
        with pytest.raises(ClusterError, match=rf"^{where}: waited 1 s for 1 x \{{CPU: 1\}}"):
            reserve(Demand(where, {"CPU": 1}), timeout_s=1)
        with pytest.raises(ClusterError, match=r"^cluster: waited 2 s for 2 student workers"):
            fit(_never_called, {}, num_workers=2, use_gpu=False, cpus_per_worker=1, storage_path=tmp_path,
                name="busy", placement_timeout_s=2)
    finally:
        release(holder)


@pytest.mark.slow
def test_paths_every_node_must_see(ray_session, tmp_path):
    """The shared-storage probe: a missing input is named with its field and node; a shared folder passes."""
    from cluster.storage import check_shared

    check_shared({"data.shards": tmp_path}, {"output.dir": tmp_path / "run"})
    assert not list((tmp_path / "run").iterdir())  # the probe file is cleaned up
    with pytest.raises(ClusterError, match=r"^teachers.members.1.source: .*/gone.pt does not exist on node "):
        check_shared({"teachers.members.1.source": tmp_path / "gone.pt"}, {})
