"""The packed ternary MobileNetV2 (``students.export``: fused blocks, the fp32 NHWC stem and
depthwise kernels) against onnxruntime fp32 and int8 on the same student, batch 1, with a
per-module profile of the packed model.

    python -m benchmarks.kernels --model            # 32 (w0.5) and 224, 1 and 2 threads
    python -m benchmarks.kernels --model --quick    # 32 only, 1 thread

Random-init weights (latency does not depend on their values). ``ort_fp32``: the fp32
student through ``torch.onnx.export(dynamo=True)``; ``ort_int8``: that file through
``onnxruntime.quantization.quantize_static`` (QDQ, per-channel int8 weights, 8 random
calibration batches). ``packed``: the TWN student exported (stem fp32 as ``keep_first``,
classifier fp32 as ``keep_last``). Interleaved rounds; 1 thread: thread CPU time (see
benchmarks/kernel_layers.py), 2 threads: wall time. One ``kernel_model`` line per (model,
threads), then one ``kernel_model_profile`` line per top-level module of the packed model
(the median of its own calls, 1 thread): where the time goes, layer by layer.
"""

from __future__ import annotations

import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import students
from benchmarks.kernel_layers import MODELS, _rounds
from kernels import _cpu


def _sessions(fp: torch.nn.Module, x: torch.Tensor, threads: int, tmp: Path):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    f = io.BytesIO()
    torch.onnx.export(fp, (x,), f, dynamo=True, external_data=False)
    (tmp / "fp32.onnx").write_bytes(f.getvalue())
    import onnx

    name = onnx.load(str(tmp / "fp32.onnx")).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            g = torch.Generator().manual_seed(1)
            self.batches = iter([{name: torch.randn(x.shape, generator=g).numpy()} for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(tmp / "fp32.onnx"), str(tmp / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)  # fmt: skip
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    xn = x.numpy()
    out = {}
    for form in ("fp32", "int8"):
        s = ort.InferenceSession(str(tmp / f"{form}.onnx"), so, providers=["CPUExecutionProvider"])
        out[f"ort_{form}"] = lambda s=s: s.run(None, {name: xn})
    return out


def _profile(packed: torch.nn.Module, x: torch.Tensor, model: str) -> None:
    """Median time of each top-level block of the packed model on its real input (1 thread)."""
    seen: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}
    blocks = [(f"stages.{i}.{j}", b) for i, st in enumerate(packed.stages) for j, b in enumerate(st)]
    mods = [("stem", packed.stem), *blocks, ("final", packed.final), ("head", packed.head)]
    def keep(name: str):
        def hook(m: torch.nn.Module, inp: tuple, out: torch.Tensor) -> None:  # returns None: output unchanged
            seen[name] = (m, inp[0])

        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in mods]
    with torch.inference_mode():
        packed(x)
        for h in hooks:
            h.remove()
        for name, (m, inp) in seen.items():
            tm = _rounds({"m": lambda m=m, inp=inp: m(inp)}, 7, 0.004, time.thread_time)["m"]
            print(json.dumps({"bench": "kernel_model_profile", "model": model, "module": name,
                              "type": type(m).__name__, "input": list(inp.shape),
                              "us": round(statistics.median(tm) * 1e6, 1)}), flush=True)  # fmt: skip


def run(models: list[str], threads: list[int], rounds: int) -> None:
    isa = _cpu.isa() if _cpu.backend() == "cpp" else "torch-reference"
    for model in models:
        arch, hw = MODELS[model]
        torch.manual_seed(0)
        fp = students.create_model(**arch).eval()
        packed = students.export(students.quantize(fp, "twn").eval())
        x = torch.randn(1, arch.get("in_chans", 3), hw, hw)
        with tempfile.TemporaryDirectory() as tmp:
            for t in threads:
                torch.set_num_threads(t)
                fns = {"packed": lambda p=packed, x=x: p(x), **_sessions(fp, x, t, Path(tmp))}
                with torch.inference_mode():
                    tm = _rounds(fns, rounds, 0.05, time.thread_time if t == 1 else time.perf_counter)
                ratio = lambda a, tm=tm: statistics.median(p / q for p, q in zip(tm[a], tm["packed"], strict=True))  # noqa: E731
                print(json.dumps({"bench": "kernel_model", "model": model, "threads": t, "batch": 1,
                                  **{f"{k}_ms": round(statistics.median(v) * 1e3, 3) for k, v in tm.items()},
                                  "speedup_vs_ort_fp32": round(ratio("ort_fp32"), 2),
                                  "speedup_vs_ort_int8": round(ratio("ort_int8"), 2), "rounds": rounds,
                                  "isa": isa, "load_avg": round(float(np.loadtxt("/proc/loadavg", usecols=0)), 1)}),
                      flush=True)  # fmt: skip
        torch.set_num_threads(1)
        _profile(packed, x, model)
