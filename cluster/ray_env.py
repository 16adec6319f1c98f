"""Starting or joining Ray.

An embedded Ray (no address) runs on this machine only. On Linux Ray swaps
127.0.0.1 for the interface address; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
keeps a one-node Ray on loopback, which is what a single machine wants and
what keeps test traffic local. Logical CPUs may exceed physical cores so a
small job (teachers plus student workers) fits on a 2-core laptop; the
threads each process uses are still set from its own CPU share.
"""

from __future__ import annotations

import os
from typing import Any

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
    if address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        cpus = max(float(os.cpu_count() or 1), num_cpus or 0)
        ray.init(address="local", num_cpus=int(cpus + 0.999), namespace=namespace, resources=resources or None,
                 labels=labels or None, runtime_env=env, log_to_driver=True, configure_logging=False)
    else:
        ray.init(address=address, namespace=namespace, runtime_env=env, log_to_driver=True)
    return True


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
