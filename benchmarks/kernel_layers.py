"""The kernels at the real layer shapes of MobileNetV2, against onnxruntime fp32 and int8 on
the same shapes (one-node graphs), batch 1.

    python -m benchmarks.kernels --layers            # both models, 1 and 2 threads
    python -m benchmarks.kernels --layers --quick    # CIFAR size only, 1 thread

Models: MobileNetV2 width 0.5 at 32x32 (the CIFAR variant) and width 1.0 at 224x224; the
shapes are read from the fp32 model's own convs (forward hooks). Per distinct shape:

- ``pw`` (1x1 conv, a GEMM with M = H*W rows): ours = the packed ternary kernel on the
  channels-last input with the fused clamp (``ops.conv1x1_direct``, what the packed model
  calls); ``ort_fp32`` = one Conv node (NCHW, bias); ``ort_int8`` = one QLinearConv node
  (uint8 input already quantized, int8 per-channel weights, uint8 output): it skips the
  quantization our kernel does inside the call.
- ``dw`` (depthwise 3x3): ours = ``ops.depthwise_direct`` (fp32, BN folded, ReLU6 fused);
  ORT as above with group = C.
- ``stem`` (the full 3x3 conv, kept fp32 by ``keep_first``): ours = ``ops.conv3x3_direct``
  (fp32, reading the NCHW network input, writing channels last, ReLU6 fused).

Candidates alternate round by round (benchmarks/kernels.py says why). With one thread the
clock is the thread's CPU time (ours and ORT's single-threaded runs execute on the calling
thread), the steadiest measure on a busy shared machine; with two, wall time. One JSON line
per (model, shape, threads), and a ``layer_sum`` line per (model, threads): the times summed
over every layer of the model (count x time), which is the kernels' share of a forward pass.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import nn

import students
from kernels import _cpu, ops
from kernels.packing import pack_ternary

MODELS = {
    "mbv2_w0.5_32": ({"name": "mobilenet_v2", "num_classes": 10, "variant": "cifar", "width_mult": 0.5}, 32),
    "mbv2_224": ({"name": "mobilenet_v2", "num_classes": 1000}, 224),
}


def layer_shapes(arch: dict[str, Any], hw: int) -> Counter:
    """Counter of (kind, C_in, C_out, H, W, stride) over the convs of the fp32 model."""
    model = students.create_model(**arch).eval()
    shapes: Counter = Counter()

    def hook(mod: nn.Conv2d, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        _, c, h, w = inp[0].shape
        kind = "pw" if mod.kernel_size == (1, 1) else "dw" if mod.groups == c > 1 else "stem"
        shapes[(kind, c, mod.out_channels, h, w, mod.stride[0])] += 1

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(1, arch.get("in_chans", 3), hw, hw))
    return shapes


def _ort_session(nodes, inits, inp, out, threads: int):
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    vi = lambda name, dt, shape: helper.make_tensor_value_info(name, dt, shape)  # noqa: E731
    graph = helper.make_graph(nodes, "g", [vi(*inp)], [vi(*out)], [numpy_helper.from_array(a, n) for n, a in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ort_candidates(kind: str, c: int, o: int, h: int, w: int, s: int, threads: int, g: torch.Generator):
    """(fp32 Conv, int8 QLinearConv) one-node sessions and their feeds."""
    from onnx import TensorProto, helper

    groups, ks = (c, 3) if kind == "dw" else (1, 1 if kind == "pw" else 3)
    pad = 0 if ks == 1 else 1
    wt = torch.randn(o, c // groups, ks, ks, generator=g).numpy()
    bias = torch.randn(o, generator=g).numpy()
    ho, wo = (h + 2 * pad - ks) // s + 1, (w + 2 * pad - ks) // s + 1
    attrs = {"kernel_shape": [ks, ks], "strides": [s, s], "pads": [pad] * 4, "group": groups}
    x = torch.randn(1, c, h, w, generator=g).numpy()
    fp = _ort_session([helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)], [("w", wt), ("b", bias)],
                      ("x", TensorProto.FLOAT, [1, c, h, w]), ("y", TensorProto.FLOAT, [1, o, ho, wo]), threads)  # fmt: skip
    wq = np.clip(np.round(wt / (np.abs(wt).reshape(o, -1).max(1).reshape(-1, 1, 1, 1) / 127)), -127, 127).astype(np.int8)
    inits = [("xs", np.array(0.05, np.float32)), ("xz", np.array(128, np.uint8)), ("wq", wq),
             ("ws", np.full(o, 0.01, np.float32)), ("wz", np.zeros(o, np.int8)), ("ys", np.array(0.05, np.float32)),
             ("yz", np.array(128, np.uint8)), ("bq", (bias * 1000).astype(np.int32))]  # fmt: skip
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "wq", "ws", "wz", "ys", "yz", "bq"], ["y"], **attrs)
    q8 = _ort_session([node], inits, ("x", TensorProto.UINT8, [1, c, h, w]), ("y", TensorProto.UINT8, [1, o, ho, wo]),
                      threads)  # fmt: skip
    xq = np.clip(np.round(x / 0.05) + 128, 0, 255).astype(np.uint8)
    return (lambda: fp.run(None, {"x": x})), (lambda: q8.run(None, {"x": xq}))


def _ours(kind: str, c: int, o: int, h: int, w: int, s: int, g: torch.Generator):
    x = torch.randn(1, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(o, generator=g)
    if kind == "pw":
        wp, sp = pack_ternary(torch.randint(-1, 2, (o, c), generator=g)), torch.rand(o, generator=g) + 0.5
        return lambda: ops.conv1x1_direct(x, "ternary", wp, o, sp, None, bias, 0.0, 6.0)
    if kind == "dw":
        wt = torch.randn(3, 3, c, generator=g)
        return lambda: ops.depthwise_direct(x, wt, bias, s, 1, 0.0, 6.0)
    wt, xn = torch.randn(3, 3, c, o, generator=g), x.contiguous()  # the network input: NCHW
    return lambda: ops.conv3x3_direct(xn, wt, bias, s, 1, 0.0, 6.0)


def _rounds(fns: dict[str, Any], rounds: int, target_s: float, clock) -> dict[str, list[float]]:
    reps = {}
    for name, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, min(2000, int(target_s / max(time.perf_counter() - t0, 1e-7))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name in list(fns) if r % 2 == 0 else list(reversed(fns)):
            t0 = clock()
            for _ in range(reps[name]):
                fns[name]()
            times[name].append((clock() - t0) / reps[name])
    return times


def run(models: list[str], threads: list[int], rounds: int, target_s: float) -> None:
    isa = _cpu.isa() if _cpu.backend() == "cpp" else "torch-reference"
    for model in models:
        arch, hw = MODELS[model]
        shapes = layer_shapes(arch, hw)
        for t in threads:
            torch.set_num_threads(t)
            clock = time.thread_time if t == 1 else time.perf_counter
            totals = Counter()
            for (kind, c, o, h, w, s), count in shapes.items():
                g = torch.Generator().manual_seed(c * 1000 + o + h)
                fp, q8 = _ort_candidates(kind, c, o, h, w, s, t, g)
                with torch.inference_mode():
                    tm = _rounds({"ours": _ours(kind, c, o, h, w, s, g), "ort_fp32": fp, "ort_int8": q8},
                                 rounds, target_s, clock)  # fmt: skip
                med = {k: statistics.median(v) for k, v in tm.items()}
                for k, v in med.items():
                    totals[k] += count * v
                ratio = lambda a, tm=tm: statistics.median(p / q for p, q in zip(tm[a], tm["ours"], strict=True))  # noqa: E731
                ho = (h + 2 * (kind != "pw") - (1 if kind == "pw" else 3)) // s + 1
                macs = ho * ho * o * (9 if kind == "dw" else c * (1 if kind == "pw" else 9))
                row = {"bench": "kernel_layer", "model": model, "kind": kind, "c_in": c, "c_out": o, "h": h, "w": w,
                       "stride": s, "count": count, "threads": t, "macs": macs,
                       "speedup_vs_ort_fp32": round(ratio("ort_fp32"), 2),
                       "speedup_vs_ort_int8": round(ratio("ort_int8"), 2),
                       **{f"{k}_us": round(v * 1e6, 1) for k, v in med.items()},
                       "ours_gmacs": round(macs / med["ours"] / 1e9, 1), "rounds": rounds, "isa": isa}  # fmt: skip
                print(json.dumps(row), flush=True)
            row = {"bench": "kernel_layer_sum", "model": model, "threads": t,
                   **{f"{k}_us": round(v * 1e6, 1) for k, v in totals.items()},
                   "speedup_vs_ort_fp32": round(totals["ort_fp32"] / totals["ours"], 2),
                   "speedup_vs_ort_int8": round(totals["ort_int8"] / totals["ours"], 2), "isa": isa}  # fmt: skip
            print(json.dumps(row), flush=True)
