"""Where actors and workers go, and whether the cluster can ever hold them.

A job asks for groups of equal bundles (each teacher's replicas, the student
workers), each bundle maybe restricted to nodes with certain labels. Before
anything starts, ``check_feasible`` compares those demands with what the live
nodes have in total: a bundle no single node can hold, or a group larger than
all matching nodes together, can never be scheduled, and waiting for it would
hang forever, so it fails at once with one line. What passes that check may
still be busy; ``reserve`` then holds a placement group (all bundles or none)
and waits up to a timeout, so a job never starts half its teachers.

On a cluster with an autoscaler the live nodes are not the limit, so the
check is skipped there and only the timeout applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ClusterError(RuntimeError):
    """The cluster cannot run the job as asked; the message is one line naming the field."""


@dataclass
class Demand:
    """``count`` equal bundles for one part of the job (``where`` names its spec field)."""

    where: str
    bundle: dict[str, float]
    count: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    strategy: str = "PACK"

    def __post_init__(self) -> None:
        self.bundle = {k: float(v) for k, v in self.bundle.items() if v}


@dataclass
class Node:
    address: str
    resources: dict[str, float]
    labels: dict[str, str]


def live_nodes() -> list[Node]:
    import ray

    return [Node(n["NodeManagerAddress"], dict(n["Resources"]), dict(n.get("Labels") or {}))
            for n in ray.nodes() if n["Alive"]]


def autoscaling() -> bool:
    """True when an autoscaler may add nodes (then live totals are not the limit)."""
    try:
        from ray._private.state import state  # Ray Train reads the same cluster config

        return state.get_cluster_config() is not None
    except Exception:  # noqa: BLE001 - older/newer Ray without it: treat as a fixed cluster
        return False


def format_resources(res: dict[str, float]) -> str:
    """``{CPU: 1, teacher_node: 1}``: resources as people write them."""
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items())) + "}"


_fmt = format_resources


def _fits(bundle: dict[str, float], have: dict[str, float]) -> bool:
    return all(have.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())


def _matches(node: Node, labels: dict[str, str]) -> bool:
    return all(node.labels.get(k) == v for k, v in labels.items())


def check_feasible(demands: list[Demand], nodes: list[Node]) -> None:
    """Raise ``ClusterError`` when some demand can never be met by these nodes.

    Checks are necessary conditions only (one bundle fits some matching node;
    a group fits the matching nodes' sum; all groups fit the cluster's sum), so
    a job that could be placed is never refused.
    """
    summary = "; ".join(f"{n.address} {_fmt(_visible(n.resources))}" for n in nodes) or "no live nodes"
    for d in demands:
        where_labels = f" with labels {d.labels}" if d.labels else ""
        fit = [n for n in nodes if _matches(n, d.labels) and _fits(d.bundle, n.resources)]
        if not fit:
            raise ClusterError(f"{d.where}: needs {_fmt(d.bundle)} on one node{where_labels}, "
                               f"but no node has that (nodes: {summary})")
        if d.strategy == "STRICT_SPREAD" and len(fit) < d.count:
            raise ClusterError(f"{d.where}: STRICT_SPREAD needs {d.count} nodes that fit {_fmt(d.bundle)}"
                               f"{where_labels}, the cluster has {len(fit)}")
        pool = _total(n.resources for n in nodes if _matches(n, d.labels))
        need = {k: v * d.count for k, v in d.bundle.items()}
        if not _fits(need, pool):
            raise ClusterError(f"{d.where}: {d.count} x {_fmt(d.bundle)} needs {_fmt(need)}{where_labels}, "
                               f"the matching nodes have {_fmt(_visible(pool))} in total")
    need = _total({k: v * d.count for k, v in d.bundle.items()} for d in demands)
    have = _total(n.resources for n in nodes)
    if not _fits(need, have):
        short = {k: v for k, v in need.items() if have.get(k, 0.0) + 1e-9 < v}
        raise ClusterError(f"cluster: the job needs {_fmt(need)} at once but the cluster has "
                           f"{_fmt(_visible(have))}; short of {_fmt(short)}")


def _total(resources: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for res in resources:
        for k, v in res.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _visible(res: dict[str, float]) -> dict[str, float]:
    """Drop Ray's bookkeeping resources (node:..., memory) from messages."""
    return {k: v for k, v in res.items()
            if not k.startswith("node:") and k not in ("memory", "object_store_memory")}


def reserve(demand: Demand, timeout_s: float | None) -> Any:
    """A ready placement group for ``demand`` (all bundles or none), or ``ClusterError`` after the timeout."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundles = [dict(demand.bundle) or {"CPU": 0.001} for _ in range(demand.count)]
    selector = [dict(demand.labels) for _ in bundles] if demand.labels else None
    pg = placement_group(bundles, strategy=demand.strategy, bundle_label_selector=selector)
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise ClusterError(f"{demand.where}: waited {timeout_s:g} s for {demand.count} x "
                           f"{_fmt(demand.bundle)}; the cluster has them but they are in use "
                           "(see `ray status`); raise cluster.placement_timeout_s to wait longer") from None
    return pg


def bundle_options(pg: Any, index: int = -1) -> dict[str, Any]:
    """Actor ``.options(...)`` that put an actor in bundle ``index`` of ``pg`` (-1: any free one)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=index, placement_group_capture_child_tasks=False)}


def release(pg: Any) -> None:
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(pg)


__all__ = ["ClusterError", "Demand", "Node", "autoscaling", "bundle_options", "check_feasible",
           "format_resources", "live_nodes", "release", "reserve"]
