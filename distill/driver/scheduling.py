"""How a job spec maps onto Ray resources, and the checks made before it starts.

Each teacher's replicas and the student workers become placement-group
demands (``cluster.placement.Demand``) built from the spec's resources, custom
resources and node labels. Right after Ray is up the driver checks them
against the cluster (one-line error if the cluster can never hold them) and,
when it joined an existing cluster, that every node sees the data and teacher
files and shares the run and TensorBoard folders with the driver.
"""

from __future__ import annotations

from pathlib import Path

from cluster.placement import ClusterError, Demand, autoscaling, check_feasible, live_nodes
from cluster.storage import check_shared
from cluster.train import worker_bundle
from distill.spec import JobSpec, TeacherSpec


def teacher_demand(i: int, member: TeacherSpec, strategy: str) -> Demand:
    res = member.resources
    return Demand(f"teachers.members.{i}.resources",
                  {**res.custom, "CPU": res.num_cpus, "GPU": res.num_gpus},
                  count=member.replicas, labels=dict(res.labels), strategy=strategy)


def worker_demand(spec: JobSpec) -> Demand:
    c = spec.cluster
    return Demand("cluster", worker_bundle(c.cpus_per_worker, c.use_gpu, c.worker_resources),
                  count=c.num_workers, labels=dict(c.worker_labels), strategy=c.placement_strategy)


def online(spec: JobSpec) -> bool:
    return spec.teachers.mode == "online" and bool(spec.teachers.members)


def demands(spec: JobSpec) -> list[Demand]:
    teachers = [teacher_demand(i, m, spec.cluster.teacher_placement_strategy)
                for i, m in enumerate(spec.teachers.members)] if online(spec) and not spec.teachers.service else []
    return [*teachers, worker_demand(spec)]


def embedded_extras(spec: JobSpec) -> dict:
    """What an embedded Ray must declare so this spec fits on one machine: CPUs, custom resources, labels."""
    need: dict[str, float] = {}
    labels: dict[str, str] = {}
    for d in demands(spec):
        for k, v in d.bundle.items():
            need[k] = need.get(k, 0.0) + v * d.count
        for k, v in d.labels.items():
            labels.setdefault(k, v)  # conflicting selectors stay unmet; check_feasible names them
    custom = {k: v for k, v in need.items() if k not in ("CPU", "GPU")}
    return {"num_cpus": need.get("CPU", 0.0), "resources": custom or None, "labels": labels or None}


def check_cluster(spec: JobSpec, data_root: Path, *, joined: bool) -> None:
    """Raise ``ClusterError`` (one line) if the cluster can never run this job or cannot see its files."""
    if not autoscaling():
        check_feasible(demands(spec), live_nodes())
    if joined:
        field = "data.source" if data_root.resolve() == Path(spec.data.source).resolve() else "data.shards"
        read = {field: data_root / "meta.json"}
        if online(spec):
            read.update({f"teachers.members.{i}.source": Path(m.source).resolve()
                         for i, m in enumerate(spec.teachers.members)})
        check_shared({k: Path(v).resolve() for k, v in read.items()},
                     {"output.dir": spec.output.dir.resolve(),
                      "logging.tensorboard": spec.logging.tensorboard.resolve()})


__all__ = ["ClusterError", "check_cluster", "demands", "embedded_extras", "online", "teacher_demand",
           "worker_demand"]
