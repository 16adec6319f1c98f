"""Running a training function on a Ray Train worker group.

``cluster`` knows how and where to run, not what: the caller passes the
per-worker function and its config. ``TorchTrainer`` sets up the process group
(gloo on CPU, NCCL on GPU); the function builds a Lightning ``Trainer`` with
``lightning_plugins()`` and the CPU-capable DeepSpeed strategy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def fit(train_fn: Callable[[dict], None], config: dict[str, Any], *, num_workers: int, use_gpu: bool,
        cpus_per_worker: float, storage_path: Path, name: str, max_failures: int = 0,
        resources_per_worker: dict[str, float] | None = None) -> Any:
    """Run ``train_fn(config)`` on ``num_workers`` Ray Train workers and wait for it."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": cpus_per_worker, **(resources_per_worker or {})}
    if use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=str(storage_path.resolve()),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    return trainer.fit()


def lightning_plugins() -> list[Any]:
    """The cluster environment a Lightning Trainer needs inside a Ray Train worker."""
    from ray.train.lightning import RayLightningEnvironment

    return [RayLightningEnvironment()]


def worker_rank() -> tuple[int, int]:
    """(rank, world size) of this Ray Train worker."""
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()
