"""Starting or joining Ray.

An embedded Ray (no address) runs on this machine only. On Linux Ray swaps
127.0.0.1 for the interface address; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
keeps a one-node Ray on loopback, which is what a single machine wants and
what keeps test traffic local. Logical CPUs may exceed physical cores so a
small job (teachers plus student workers) fits on a 2-core laptop; the
threads each process uses are still set from its own CPU share.

Across machines the collective backends must be told where to listen: gloo
and NCCL otherwise take the address the hostname resolves to, which on many
Debian hosts and containers is 127.0.0.1, and peers on other nodes are then
refused. Every Ray worker of a job runs ``prepare_worker`` at start (Ray's
``worker_process_setup_hook``): it finds the interface that holds the node's
Ray address and names it in ``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME``
before Ray Train creates the process group. Ray Train itself sets
``MASTER_ADDR`` to rank 0's node address.

An embedded Ray must not outlive its driver, even one killed with SIGKILL:
``cluster/reaper.py`` watches its processes and ends them when the driver goes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SETUP_HOOK = "cluster.ray_env.prepare_worker"
IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
WORKER_ENV = {"DS_ACCELERATOR": "cpu", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
              "TOKENIZERS_PARALLELISM": "false"}


def worker_env(embedded: bool = True) -> dict[str, str]:
    """Environment every Ray worker of a job gets (DeepSpeed must see its accelerator before import).

    On a real cluster the loopback switch must not reach the workers: it makes
    Ray report 127.0.0.1 as a node's address, which other nodes cannot reach.
    """
    import torch

    env = {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}
    if torch.cuda.is_available():
        env.pop("DS_ACCELERATOR")
    if not embedded:
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    return env


def interface_for(ip: str) -> str | None:
    """The network interface that carries ``ip`` (``lo`` for 127.0.0.1), or None if none does."""
    import socket

    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family in (socket.AF_INET, socket.AF_INET6) and a.address.split("%")[0] == ip for a in addrs):
            return name
    return None


def bind_collectives(node_ip: str | None = None) -> str | None:
    """Point gloo and NCCL at the interface of this node's Ray address; returns its name.

    Runs in every Ray worker process before it does any work. A value the
    node's own environment already sets is kept (an operator knows better).
    """
    if node_ip is None:
        import ray

        node_ip = ray.util.get_node_ip_address()
    name = interface_for(node_ip)
    if name is not None:
        for var in IFNAME_VARS:
            os.environ.setdefault(var, name)
    return name


def prepare_worker() -> None:
    """Ray's ``worker_process_setup_hook`` for every worker of a job: runs before the worker does any work.

    Besides binding the collectives, it names the worker's own cluster in
    ``RAY_ADDRESS``. Code inside workers that reaches Ray's state API (Ray
    Train's ``PlacementGroupCleaner`` polls it for its controller) otherwise
    finds "the" cluster by scanning the machine for Ray processes, which picks
    another Ray, or fails with "Found multiple active Ray instances", whenever
    more than one runs on the machine (tests, other users, a second job), and
    prints a traceback from a background thread on every run.
    """
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    bind_collectives(ray.util.get_node_ip_address())


def connect(address: str | None = None, *, namespace: str = "distill", num_cpus: float | None = None,
            resources: dict[str, float] | None = None, labels: dict[str, str] | None = None,
            runtime_env: dict[str, Any] | None = None) -> bool:
    """Start an embedded Ray (``address=None``) or join a cluster; returns True if this call started it.

    An embedded Ray also declares the custom ``resources`` and node ``labels``
    a job asks for, so a spec written for a cluster (teachers pinned to
    ``teacher_node``...) runs on one machine unchanged. A cluster's nodes
    declare their own.
    """
    import ray

    if ray.is_initialized():
        return False
    env = dict(runtime_env or {})
    env.setdefault("env_vars", {}).update(worker_env(embedded=address is None))
    env.setdefault("worker_process_setup_hook", SETUP_HOOK)
    if address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        cpus = max(float(os.cpu_count() or 1), num_cpus or 0)
        before = _children()
        ray.init(address="local", num_cpus=int(cpus + 0.999), namespace=namespace, resources=resources or None,
                 labels=labels or None, runtime_env=env, log_to_driver=True, configure_logging=False)
        _start_reaper(sorted(_children() - before))
    else:
        ray.init(address=address, namespace=namespace, runtime_env=env, log_to_driver=True)
    return True


_reaper: subprocess.Popen | None = None


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children()}


def _start_reaper(pids: list[int]) -> None:
    """Watch the processes an embedded Ray just started (see ``cluster.reaper``): they end with us."""
    global _reaper
    _reaper = subprocess.Popen([sys.executable, str(Path(__file__).with_name("reaper.py")), *map(str, pids)],
                               stdin=subprocess.PIPE, start_new_session=True)


def shutdown() -> None:
    """Leave Ray; an embedded one is stopped and its watchdog ends whatever of it is left."""
    import ray

    global _reaper
    if ray.is_initialized():
        ray.shutdown()
    if _reaper is not None:
        _reaper.stdin.close()
        try:
            _reaper.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _reaper.kill()
        _reaper = None
