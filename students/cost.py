"""What a student costs: parameters, multiply-adds, and storage bytes at a given bit width.

MACs come from torch's own `FlopCounterMode` (FLOPs / 2), which counts convs
and matmuls only -- the same convention the papers use for "mult-adds", so
our numbers are comparable to theirs. Counting runs on whatever device the
model lives on, including `meta`, which makes the whole-zoo table cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .registry import create_model, list_models, model_info


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass on a single (C, H, W) input."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, *input_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def _quantizable(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d | nn.Linear)


def model_bytes(model: nn.Module, bits: int = 32) -> int:
    """Bytes to store the model with conv/linear weights packed at `bits` bits each.

    Conv and linear weights are what low-bit students quantize (2 bits holds a
    ternary weight, 1 bit a binary one); each such tensor below 32 bits also
    stores one fp32 scale. Biases and BatchNorm parameters stay fp32, as in
    TWN/XNOR-style deployments. BN running statistics are not counted: they
    fold into the conv at export.
    """
    if not isinstance(bits, int) or not 1 <= bits <= 32:
        raise ValueError(f"model_bytes: bits={bits!r} must be an int in 1..32")
    total_bits = 0
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if name == "weight" and _quantizable(module) and bits < 32:
                total_bits += p.numel() * bits + 32
            else:
                total_bits += p.numel() * 32
    return math.ceil(total_bits / 8)


@dataclass(frozen=True)
class ZooRow:
    """One line of `distill students`: cost of a default-option model."""

    name: str
    params: int
    macs: int
    bytes_fp32: int
    bytes_int8: int
    bytes_ternary: int
    bytes_binary: int


def zoo_table(variant: str = "imagenet", num_classes: int = 1000, in_chans: int = 3) -> list[ZooRow]:
    """Cost of every registered model with default options at the variant's default input size.

    Models are built on the meta device, so no weights are allocated and no
    arithmetic is done: the table for the whole zoo takes well under a second.
    """
    rows = []
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes, in_chans=in_chans, variant=variant)
        _, h, w = model_info(name).input_size[variant]
        rows.append(
            ZooRow(
                name=name,
                params=count_params(model),
                macs=count_macs(model, (in_chans, h, w)),
                bytes_fp32=model_bytes(model, 32),
                bytes_int8=model_bytes(model, 8),
                bytes_ternary=model_bytes(model, 2),
                bytes_binary=model_bytes(model, 1),
            )
        )
    return rows
