"""Which precision a run actually trains in, given what the device supports.

bf16 needs no loss scaling and runs on CPUs (DeepSpeed's CPU accelerator
trains in it) and on GPUs from Ampere on; fp16 needs a CUDA GPU (DeepSpeed's
dynamic loss scaler). Where the device lacks the requested format the run
falls back, says so once, and records the precision it used.
"""

from __future__ import annotations

import torch

LIGHTNING_PRECISION = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


def resolve_precision(requested: str, use_gpu: bool) -> tuple[str, str | None]:
    """(precision to train in: "32", "bf16" or "16"; a warning when it differs from ``requested``)."""
    gpu = use_gpu and torch.cuda.is_available()
    if requested == "bf16" and gpu and not torch.cuda.is_bf16_supported():
        return "16", "trainer.precision: this GPU has no bf16; training in fp16 with loss scaling"
    if requested == "16" and not gpu:
        return "bf16", "trainer.precision: fp16 needs a CUDA GPU; training in bf16 on the CPU"
    return requested, None
