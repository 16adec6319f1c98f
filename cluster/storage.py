"""Checking that the paths a job's workers use mean the same thing on every node.

On a cluster, teachers and student workers run on other machines: the data
shards, teacher files, run folder (checkpoints) and TensorBoard folder must
be on storage every node mounts at the same path (NFS, a shared volume, a
FUSE-mounted bucket). A node-local folder that merely exists everywhere is
the dangerous case: each node would write its own checkpoints and a restart
on another node would silently start over. So the driver writes a probe file
into each folder it must write, and a zero-CPU task on every live node
looks for the inputs and for that probe; one line names the first path and
node that disagree.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from cluster.placement import ClusterError


def _look(read: dict[str, str], probes: dict[str, str]) -> dict[str, str]:
    """Runs on a node: which inputs are missing and which probes are not visible."""
    import time

    bad = {where: f"{path} does not exist" for where, path in read.items() if not os.path.exists(path)}
    for _ in range(6):  # network filesystems may show a new file a moment late
        unseen = {where: path for where, path in probes.items() if not os.path.exists(path)}
        if not unseen:
            break
        time.sleep(0.5)
    bad.update({where: f"{path} is not shared (the driver's probe file is not visible)"
                for where, path in unseen.items()})
    return bad


def check_shared(read: dict[str, Path], write: dict[str, Path]) -> None:
    """Raise ``ClusterError`` unless every live node sees ``read`` and shares ``write`` with the driver.

    Keys name the spec field (e.g. ``output.dir``) so the message points at what to change.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probes: dict[str, Path] = {}
    for where, folder in write.items():
        folder.mkdir(parents=True, exist_ok=True)
        probes[where] = folder / f".distill-probe-{uuid.uuid4().hex}"
        probes[where].write_text("probe")
    try:
        look = ray.remote(num_cpus=0)(_look)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        refs = [look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote({k: str(v) for k, v in read.items()}, {k: str(v) for k, v in probes.items()})
                for n in nodes]
        for node, bad in zip(nodes, ray.get(refs, timeout=120), strict=True):
            if bad:
                where, what = next(iter(bad.items()))
                node_ip = node["NodeManagerAddress"]
                raise ClusterError(f"{where}: {what} on node {node_ip}; on a cluster, data, teachers and "
                                   "output must be on storage every node mounts at one path")
    finally:
        for probe in probes.values():
            probe.unlink(missing_ok=True)


__all__ = ["check_shared"]
