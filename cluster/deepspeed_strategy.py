"""Lightning's DeepSpeed strategy, made to run on CPU as well as GPU.

Lightning's ``DeepSpeedStrategy`` refuses anything but CUDA in three places:
``setup_environment`` checks the accelerator, ``setup_distributed`` validates
device indices (``None`` on CPU) and ``_setup_model_and_optimizer`` hands
``root_device.index`` (``None`` on CPU) to ``deepspeed.initialize`` as the
device rank. DeepSpeed itself trains on CPU with ``DS_ACCELERATOR=cpu`` and the
gloo backend, so the mixin below only relaxes those three spots, passing the
local rank instead. On a GPU it defers to Lightning unchanged.

The same mixin sits on top of Ray Train's ``RayDeepSpeedStrategy`` so one
implementation serves both a plain Lightning run and a Ray Train worker group.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any

import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.strategies import DeepSpeedStrategy


def prepare_cpu_environment() -> None:
    """DeepSpeed picks its accelerator at import time: tell it before it is imported.

    On CPU, DeepSpeed JIT-builds its shared-memory collective op with whatever
    ``ninja`` is first on PATH, into one cache folder shared by every process.
    Two ninja versions (the venv's and the system's) disagree on their build
    logs, so processes that alternate between them rebuild it each time (a
    minute or two). Always using the one installed next to this Python keeps
    the cached build valid.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    bin_dir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if os.path.exists(os.path.join(bin_dir, "ninja")) and path.split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, path]) if path else bin_dir


class _CPUCapable:
    """Overrides for the three CUDA-only spots; a no-op difference on GPUs."""

    def _on_cpu(self) -> bool:
        return not isinstance(self.accelerator, CUDAAccelerator)

    def setup_environment(self) -> None:
        if not self._on_cpu():
            return super().setup_environment()
        # Skip DeepSpeedStrategy's CUDA check but keep the rest of the chain.
        return super(DeepSpeedStrategy, self).setup_environment()

    def setup_distributed(self) -> None:
        if not self._on_cpu():
            return super().setup_distributed()
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _device_rank(self) -> int:
        index = self.root_device.index
        return self.local_rank if index is None else index

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        params = filter(lambda p: p.requires_grad, model.parameters())
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self._device_rank()),
            config=self.config,
            model=model,
            model_parameters=params,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer

    def _initialize_deepspeed_inference(self, model) -> None:
        if not self._on_cpu():
            return super()._initialize_deepspeed_inference(model)
        import deepspeed

        config: dict[str, Any] = {"train_micro_batch_size_per_gpu": 1}
        if self.zero_stage_3:
            config.update(zero_allow_untested_optimizer=self.config["zero_allow_untested_optimizer"],
                          zero_optimization=self.config["zero_optimization"])
        self.model, _, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self._device_rank()), config=config, model=model,
            optimizer=None, lr_scheduler=None, model_parameters=[], dist_init_required=False)


class DeepSpeedCPUStrategy(_CPUCapable, DeepSpeedStrategy):
    """``DeepSpeedStrategy`` that also runs on CPU (gloo); use with plain Lightning."""


@functools.cache
def ray_deepspeed_strategy_class() -> type:
    """The same strategy on top of Ray Train's ``RayDeepSpeedStrategy`` (imported lazily:
    Ray Train is only needed inside a Ray worker group)."""
    from ray.train.lightning import RayDeepSpeedStrategy

    return type("RayDeepSpeedCPUStrategy", (_CPUCapable, RayDeepSpeedStrategy), {
        "__doc__": "Ray Train's DeepSpeed strategy, CPU-capable.", "__module__": __name__})


def deepspeed_config(stage: int, precision: str, micro_batch_size: int, grad_clip: float | None) -> dict:
    """The DeepSpeed JSON config for a ZeRO stage; the optimizer comes from the LightningModule."""
    config: dict[str, Any] = {
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": stage},
        "train_micro_batch_size_per_gpu": micro_batch_size,
    }
    if precision.startswith("bf16"):
        config["bf16"] = {"enabled": True}
    elif precision.startswith("16"):
        config["fp16"] = {"enabled": True}
    if grad_clip:
        config["gradient_clipping"] = grad_clip
    return config


def make_strategy(stage: int, precision: str, micro_batch_size: int, grad_clip: float | None = None,
                  ray: bool = False, **kwargs: Any) -> DeepSpeedStrategy:
    """Build the CPU-capable DeepSpeed strategy; ``ray=True`` for a Ray Train worker."""
    prepare_cpu_environment()
    cls = ray_deepspeed_strategy_class() if ray else DeepSpeedCPUStrategy
    backend = "gloo" if not torch.cuda.is_available() else "nccl"
    return cls(config=deepspeed_config(stage, precision, micro_batch_size, grad_clip),
               process_group_backend=backend, **kwargs)


__all__ = ["DeepSpeedCPUStrategy", "deepspeed_config", "make_strategy",
           "prepare_cpu_environment", "ray_deepspeed_strategy_class"]
