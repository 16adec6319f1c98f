"""Running a training function on a Ray Train worker group.

``cluster`` knows how and where to run, not what: the caller passes the
per-worker function and its config. ``TorchTrainer`` sets up the process group
(gloo on CPU, NCCL on GPU); the function builds a Lightning ``Trainer`` with
``lightning_plugins()`` and the CPU-capable DeepSpeed strategy.

Ray Train places the workers in one placement group (all or none, with the
custom resources and node labels asked for) and, with ``max_failures``,
restarts the whole group after a worker or node dies by calling the function
again. The function then resumes from its own last checkpoint:
``resume_checkpoint`` tells a checkpoint this run wrote (resume after a
restart) from one an earlier run left in the same folder (ignore, unless the
user asked to resume).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.placement import ClusterError, format_resources


def worker_bundle(cpus_per_worker: float, use_gpu: bool, custom: dict[str, float] | None = None) -> dict:
    """Ray resources one training worker holds (its placement-group bundle)."""
    return {**(custom or {}), "CPU": cpus_per_worker, **({"GPU": 1.0} if use_gpu else {})}


def fit(train_fn: Callable[[dict], None], config: dict[str, Any], *, num_workers: int, use_gpu: bool,
        cpus_per_worker: float, storage_path: Path, name: str, max_failures: int = 0,
        resources_per_worker: dict[str, float] | None = None, label_selector: dict[str, str] | None = None,
        placement_strategy: str = "PACK", placement_timeout_s: float | None = None) -> Any:
    """Run ``train_fn(config)`` on ``num_workers`` Ray Train workers and wait for it.

    ``placement_timeout_s`` bounds each wait for the workers' placement group
    (at the start and after each restart): Ray Train would otherwise retry
    forever while the cluster is busy. Running out of it raises ``ClusterError``.
    """
    from ray.train import ControllerError, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    failure = FailureConfig(max_failures=max_failures)
    timeout_var = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # read by Ray Train's controller, from our env
    saved = os.environ.get(timeout_var)
    if placement_timeout_s is not None:
        os.environ[timeout_var] = str(placement_timeout_s)
        failure = FailureConfig(max_failures=max_failures, controller_failure_limit=max_failures)
    bundle = worker_bundle(cpus_per_worker, use_gpu, resources_per_worker)
    _warm_autoscaling_coordinator(placement_timeout_s)
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=bundle,
                                     placement_strategy=placement_strategy,
                                     label_selector=dict(label_selector) if label_selector else None),
        run_config=RunConfig(name=name, storage_path=str(storage_path.resolve()), failure_config=failure),
    )
    try:
        return trainer.fit()
    except ControllerError as exc:
        # Ray Train's own exceptions for "no room for the workers" are internal; match them by name.
        kind = type(exc.controller_failure).__name__
        if kind == "WorkerGroupStartupTimeoutError":
            raise ClusterError(f"cluster: waited {placement_timeout_s:g} s for {num_workers} student "
                               f"workers x {format_resources(bundle)}; the cluster has them but they are in "
                               "use (see `ray status`)") from None
        if kind == "InsufficientClusterResourcesError":
            first = str(exc.controller_failure).strip().splitlines()
            raise ClusterError(f"cluster: {first[1] if len(first) > 1 else first[0]}") from None
        raise
    finally:
        if saved is None:
            os.environ.pop(timeout_var, None)
        else:
            os.environ[timeout_var] = saved


def _warm_autoscaling_coordinator(timeout_s: float | None) -> None:
    """Start Ray Train's autoscaling coordinator before Ray Train needs it.

    The controller registers its resource request with a detached actor it
    creates on first use and waits only 5 s for the answer. A cold actor is a
    new Python process: on a loaded 2-core machine it takes longer, and Ray
    logs a "Failed to send resource request" traceback into a run that then
    goes on fine. Created here and awaited, the controller finds it running.
    The coordinator is a Ray internal, hence the guards: without it, nothing to do.
    """
    import ray

    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:
        return
    try:
        ray.get(get_or_create_autoscaling_coordinator().__ray_ready__.remote(), timeout=timeout_s)
    except Exception:  # noqa: BLE001 - only a head start: Ray Train creates it itself if this could not
        return


def fingerprint(path: str | Path | None) -> str | None:
    """What a checkpoint file or folder looks like now (inode, sizes, times); None if absent.

    A checkpoint rewritten in place or replaced by rename changes it, so it
    tells "the one that was there when the run began" from "a new one".
    """
    if path is None or not os.path.exists(path):
        return None
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    parts = [str(path.stat().st_ino)]
    for f in files:
        try:
            st = f.stat()
        except FileNotFoundError:  # a temporary file renamed away mid-scan
            continue
        parts.append(f"{f.relative_to(path) if f != path else ''}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def resume_checkpoint(last: str | None, *, resume: bool, at_start: str | None) -> str | None:
    """The checkpoint a (re)started worker should resume from.

    ``last`` is the run folder's last checkpoint now, ``at_start`` its
    fingerprint when the driver began. A first attempt sees the same one it
    began with (resume only if asked); after a Ray Train restart ``last`` is
    one this run wrote, and the restart resumes from it.
    """
    if last is None:
        return None
    if resume:
        return last
    return last if fingerprint(last) != at_start else None


def lightning_plugins() -> list[Any]:
    """The cluster environment a Lightning Trainer needs inside a Ray Train worker."""
    from ray.train.lightning import RayLightningEnvironment

    return [RayLightningEnvironment()]


def worker_rank() -> tuple[int, int]:
    """(rank, world size) of this Ray Train worker."""
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()
