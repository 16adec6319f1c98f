"""A ternary/binary student as an ExecuTorch program: packed layers as custom kernels, the rest on XNNPACK.

    pte = export_lowbit(qmodel, example, "student.pte")     # qmodel: quantize(...) and trained
    method = load_lowbit(pte)                               # loads kernels/executorch once, then the program
    logits = method.execute([x])[0]

``students.export`` turns the trained model into packed layers (BN folded, ReLU / ReLU6
fused). Here each packed layer becomes one ``distill::`` op (kernels/executorch/ops.py):
linears as ``ternary_linear`` / ``binary_linear`` / ``xnor_linear``, convolutions as
``ternary_conv2d_cl`` / ``binary_conv2d_cl``, whose runtime kernels (lowbit_et.cpp) run the
same C kernels as the packed torch module, so the program computes the packed module's
numbers. ``students.export`` also puts the fp32 stem and depthwise convs on the project's
kernels and fuses each MobileNetV2 block into one ``inverted_residual`` op. What is left
(pooling, an fp32 head, adds outside blocks) goes to XNNPACK (``delegate="xnnpack"``) or stays
on ExecuTorch's portable kernels (``delegate="portable"``, a baseline for what XNNPACK buys).

Layout: the program's tensors are NCHW in channels-last memory throughout (the deployed
model's conv weights are channels-last, and the packed convs return channels-last), so
XNNPACK takes its inputs and gives its outputs in NHWC and inserts no transposes at the
partition boundaries, and the custom kernels read and write NHWC in place. ``program_summary``
counts delegate calls, custom-op calls and every other op left outside the delegates.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kernels.packed_layers import PackedBinaryConv2d, PackedInvertedResidual, PackedSeparable, PackedTernaryConv2d

from ..export import export
from ..layers import PoolLinearHead
from ..qlayers import QConv2d, QLinear
from ..shufflenet_v2 import ShuffleV2Unit

__all__ = ["DELEGATES", "export_lowbit", "load_lowbit", "lowbit_module", "program_summary", "run_lowbit"]

DELEGATES = ("xnnpack", "portable")


class _TernaryConvOp(nn.Module):
    """A PackedTernaryConv2d as the single op ``distill::ternary_conv2d_cl`` (same buffers)."""

    def __init__(self, layer: PackedTernaryConv2d) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        m = self.layer
        return torch.ops.distill.ternary_conv2d_cl(
            x, m.weight_packed, list(m.kernel_size), m.scale_pos, m.scale_neg, m.bias, list(m.stride),
            list(m.padding), list(m.dilation), m.act_min, m.act_max,
        )  # fmt: skip


class _BinaryConvOp(nn.Module):
    """A PackedBinaryConv2d as the single op ``distill::binary_conv2d_cl``."""

    def __init__(self, layer: PackedBinaryConv2d) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        m = self.layer
        return torch.ops.distill.binary_conv2d_cl(
            x, m.weight_packed, list(m.kernel_size), m.scale_pos, m.bias, list(m.stride), list(m.padding),
            list(m.dilation), m.binary_activations, m.act_scale, m.act_min, m.act_max,
        )  # fmt: skip


class _MeanHW(nn.Module):
    """Global average pooling straight to [N, C] on the project's kernel (``distill::mean_hw``),
    in place of ``AdaptiveAvgPool2d(1)`` + flatten. Flattening a channels-last [N, C, 1, 1]
    pooled map was an ``as_strided`` copy outside the delegates (12-15 us per image, more than
    the pooling), and a map that reached 1x1 before the pool made XNNPACK fail at run time."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.distill.mean_hw(x)


class _ShuffleUnit(nn.Module):
    """A ShuffleNet v2 unit whose channel split, concat and shuffle are the project's ops
    (``distill::slice_channels``, ``distill::concat_shuffle``) instead of XNNPACK and portable copies."""

    def __init__(self, unit: ShuffleV2Unit) -> None:
        super().__init__()
        self.unit = unit

    def forward(self, x: Tensor) -> Tensor:
        u = self.unit
        if u.stride == 1:
            half = x.shape[1] // 2
            a, b = torch.ops.distill.slice_channels(x, 0, half), torch.ops.distill.slice_channels(x, half, half)
        else:
            a = b = x
        return torch.ops.distill.concat_shuffle(u.left(a), u.right(b))


def _glue_ops(model: nn.Module) -> None:
    """Pooling and ShuffleNet's concat + shuffle on the project's kernels (``_MeanHW``, ``_ShuffleUnit``)."""
    _flat_pool(model)
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if type(child) is ShuffleV2Unit:
                parent._modules[name] = _ShuffleUnit(child)


def _flat_pool(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, PoolLinearHead) and isinstance(m.pool, nn.AdaptiveAvgPool2d) and m.pool.output_size in (1, (1, 1)):
            m.pool = _MeanHW()


def lowbit_module(model: nn.Module) -> nn.Module:
    """The module torch.export traces: ``students.export(model)`` (unless ``model`` is already
    packed: the stem, depthwise convs and MobileNetV2 blocks on the project's kernels) with each
    packed conv calling its single-op form. ``model`` is untouched."""
    import kernels.executorch.ops  # noqa: F401  (defines the ops and .out overloads)

    quantized = any(isinstance(m, QConv2d | QLinear) for m in model.modules())
    deployed = export(model) if quantized else _copy_eval(model)
    _glue_ops(deployed)
    for m in deployed.modules():  # XNNPACK lays out its own weights and refuses channels-last ones
        if type(m) is nn.Conv2d:
            m.weight.data = m.weight.data.contiguous()
    for name, m in list(deployed.named_modules()):
        wrap = _TernaryConvOp if isinstance(m, PackedTernaryConv2d) else (
            _BinaryConvOp if isinstance(m, PackedBinaryConv2d) else None)  # fmt: skip
        if wrap is not None and not _inside_fused(deployed, name):
            parent, _, child = name.rpartition(".")
            setattr(deployed.get_submodule(parent) if parent else deployed, child, wrap(m))
    return deployed.eval()


def _inside_fused(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    fused = (PackedInvertedResidual, PackedSeparable)
    return any(isinstance(model.get_submodule(".".join(parts[:i])), fused) for i in range(1, len(parts)))


def _copy_eval(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).float().eval().to(memory_format=torch.channels_last)


def lowbit_program(model: nn.Module, example_input: Tensor, delegate: str = "xnnpack") -> Any:
    """The ExecuTorch program manager (``.buffer``, ``.exported_program()``) of ``model``."""
    if delegate not in DELEGATES:
        raise ValueError(f"export_lowbit: unknown delegate {delegate!r}; choose one of {list(DELEGATES)}")
    try:
        from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    except ImportError as e:
        raise RuntimeError(f"export_lowbit: executorch is not installed ({e}); pip install executorch") from e
    module = lowbit_module(model)
    with torch.no_grad():
        ep = torch.export.export(module, (example_input.float(),))
    partitioners = []
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioners = [XnnpackPartitioner()]
    # The distill:: ops are not core ATen: the edge dialect's IR check would refuse them.
    config = EdgeCompileConfig(_check_ir_validity=False)
    edge = to_edge_transform_and_lower(ep, partitioner=partitioners, compile_config=config)
    return edge.to_executorch()


def export_lowbit(model: nn.Module, example_input: Tensor, path: str | Path, delegate: str = "xnnpack") -> dict[str, Any]:
    """Write ``model`` (a trained quantized student, or its packed export) as a .pte file; returns
    its ``program_summary``.

    ``example_input``: a batch of the shape the program will run (shapes are static).
    """
    program = lowbit_program(model, example_input, delegate)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(program.buffer)
    tmp.replace(path)  # atomic
    return program_summary(program)


def program_summary(program: Any) -> dict[str, Any]:
    """What the program runs, call by call: delegate calls, distill:: custom ops, and every other
    op outside a delegate (glue such as copies; ``alloc`` nodes are memory planning, not calls)."""
    calls: Counter[str] = Counter()
    for node in program.exported_program().graph.nodes:
        target = str(node.target)
        if node.op != "call_function" or "getitem" in target or "alloc" in target:
            continue
        calls[target.split("::")[-1] if "distill" in target else node.name.rstrip("0123456789_")] += 1
    delegate = "executorch_call_delegate"
    custom = {k: v for k, v in calls.items() if k.startswith("distill.")}
    return {"delegate_calls": calls.pop(delegate, 0), "custom_ops": custom,
            "other_ops": {k: v for k, v in calls.items() if k not in custom}}  # fmt: skip


def load_lowbit(path: str | Path) -> Any:
    """The program's ``forward`` method in executorch.runtime, with the distill kernels loaded."""
    from kernels.executorch import runtime as et_kernels

    et_kernels.load()  # after executorch.runtime, before load_method; once per process
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(Path(path)).load_method("forward")
    if method is None:
        raise RuntimeError(f"{path}: the program has no forward method")
    return method


def run_lowbit(method: Any, x: Tensor, batch: int) -> Tensor:
    """Logits of ``x`` [n, ...] through a program exported at batch size ``batch`` (last chunk padded)."""
    outs = []
    for i in range(0, x.shape[0], batch):
        chunk = x[i : i + batch].float()
        n = chunk.shape[0]
        if n < batch:
            chunk = torch.cat([chunk, chunk.new_zeros((batch - n, *chunk.shape[1:]))])
        outs.append(method.execute([chunk.contiguous()])[0][:n].clone())
    return torch.cat(outs)
