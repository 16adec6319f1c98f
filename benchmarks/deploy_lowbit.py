"""Low-bit students in ExecuTorch (packed layers as custom kernels, the rest on XNNPACK) against
the runtimes a user would pick instead, for the same student, interleaved in one run.

    python -m benchmarks.deploy_lowbit                 # all students, 1 and 2 threads
    python -m benchmarks.deploy_lowbit --quick         # MobileNetV2 at 32 only, 1 thread
    python -m benchmarks.deploy_lowbit --profile       # also: time per custom op / delegate call (ETDump)

One JSON line per (student, runtime, form, threads): latency_ms (median over rounds of the
mean batch-1 latency), bytes (the file), speedup_vs_best_fp32_runtime (fastest of
onnxruntime fp32 and ExecuTorch XNNPACK fp32, divided by this row's latency) and
speedup_vs_best_int8_runtime (ExecuTorch XNNPACK PT2E int8, likewise). top1 / agreement are
null here: these students are untrained (latency does not depend on the weights' values;
tests/test_executorch_kernels.py checks the predictions of a trained one). Their BatchNorm
statistics are drawn at random so that int8 calibration sees realistic ranges (a fresh net's
unit statistics make XNNPACK refuse the int8 program).

Forms: ``fp32`` (onnxruntime; ExecuTorch XNNPACK), ``int8`` (ExecuTorch XNNPACK, PT2E static,
calibrated on random batches), ``lowbit`` (students.deploy.executorch_lowbit: packed layers,
depthwise convs and fused MobileNetV2 blocks on the project's kernels, stem / pooling / fp32
head on XNNPACK) and ``lowbit-dw-xnnpack`` (the depthwise convs on XNNPACK instead).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import students
from benchmarks.deploy import realistic_bn_
from students.deploy.executorch_lowbit import export_lowbit, load_lowbit

STUDENTS = {
    "mobilenet_v2_32": ({"name": "mobilenet_v2", "variant": "cifar", "width_mult": 0.5, "num_classes": 10}, 32, "twn"),
    "mobilenet_v2_224": ({"name": "mobilenet_v2", "num_classes": 1000}, 224, "twn"),
    "mobilenet_v1_32": ({"name": "mobilenet_v1", "variant": "cifar", "alpha": 0.5, "num_classes": 10}, 32, "twn"),
    "shufflenet_v2_32": ({"name": "shufflenet_v2", "variant": "cifar", "num_classes": 10}, 32, "twn"),
    "mobilenet_v2_32_xnor": (
        {"name": "mobilenet_v2", "variant": "cifar", "width_mult": 0.5, "num_classes": 10}, 32, "xnor"),
}  # fmt: skip


def fp32_student(arch: dict[str, Any], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return realistic_bn_(students.create_model(**arch)).eval()


# ---------------------------------------------------------------- the candidates


def onnx_fp32(model: nn.Module, x: torch.Tensor, path: Path):
    import onnxruntime as ort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False, verbose=False)

    def runner(threads: int):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name, arr = sess.get_inputs()[0].name, x.numpy()
        return lambda: sess.run(None, {name: arr})

    return runner


def _et_runner(path: Path, x: torch.Tensor):
    def runner(threads: int):
        method = load_lowbit(path)  # loads the distill kernels once; harmless for plain programs
        return lambda: method.execute([x])

    return runner


def executorch_fp32(model: nn.Module, x: torch.Tensor, path: Path, int8: bool = False):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    graph = model
    if int8:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for _ in range(8):
                prepared(torch.randn(x.shape, generator=g))
        graph = convert_pt2e(prepared)
    with torch.no_grad():
        ep = torch.export.export(graph, (x,))
    program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(program.buffer)
    return _et_runner(path, x)


def executorch_lowbit(qmodel: nn.Module, x: torch.Tensor, path: Path, depthwise: str = "project"):
    export_lowbit(qmodel, x, path)
    return _et_runner(path, x)


def set_threads(threads: int) -> None:
    from kernels.executorch import runtime

    torch.set_num_threads(threads)
    runtime.set_num_threads(threads)


# ---------------------------------------------------------------- timing


def measure(fns: dict[str, Any], rounds: int, reps: int) -> dict[str, float]:
    """Median over rounds of the mean seconds per call; candidates alternate order by round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(3):
            fn()
    for r in range(rounds):
        for name in list(fns) if r % 2 == 0 else list(reversed(fns)):
            t0 = time.perf_counter()
            for _ in range(reps):
                fns[name]()
            times[name].append((time.perf_counter() - t0) / reps)
    return {k: statistics.median(v) for k, v in times.items()}


def profile(path: Path, x: torch.Tensor, runs: int = 20) -> dict[str, float]:
    """Mean microseconds per inference by event, from an ETDump: Method::execute (the whole run),
    each custom op, DELEGATE_CALL (all XNNPACK calls) and inside them XNNPACK's ops by kind (a
    layout change there would show as a Transpose), OPERATOR_CALL (all non-delegated ops)."""
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    load_lowbit(path)
    program = Runtime.get().load_program(path, enable_etdump=True, debug_buffer_size=0)
    method = program.load_method("forward")
    for _ in range(runs):
        method.execute([x])
    with tempfile.TemporaryDirectory() as tmp:
        etdump = Path(tmp) / "run.etdp"
        program.write_etdump_result_to_file(str(etdump), str(Path(tmp) / "debug.bin"))
        inspector = Inspector(etdump_path=str(etdump))
    totals: dict[str, float] = {}
    for block in inspector.event_blocks:
        for event in block.events:
            if event.perf_data is None or event.name in ("Program::load_method", "Method::init"):
                continue
            # custom ops by name; XNNPACK's own ops (delegate debug events) by kind, e.g.
            # "Convolution (NHWC, F32) DWConv #3" -> "xnnpack: Convolution (NHWC, F32) DWConv"
            key = event.name.split("::")[-1] if "distill" in event.name else event.name
            if event.is_delegated_op or "#" in key:
                key = "xnnpack: " + key.split(" #")[0]
            totals[key] = totals.get(key, 0.0) + sum(event.perf_data.raw)
    return {k: round(1000 * v / runs, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def bench_student(key: str, threads: list[int], rounds: int, reps: int, prof: bool) -> None:
    arch, size, scheme = STUDENTS[key]
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    fp32 = fp32_student(arch)
    qmodel = students.quantize(fp32_student(arch), scheme).eval()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        forms = {
            ("onnxruntime", "fp32"): (onnx_fp32, (fp32, x, d / "fp32.onnx")),
            ("executorch-xnnpack", "fp32"): (executorch_fp32, (fp32, x, d / "fp32.pte")),
            ("executorch-xnnpack", "int8"): (executorch_fp32, (fp32, x, d / "int8.pte", True)),
            ("executorch-xnnpack", "lowbit"): (executorch_lowbit, (qmodel, x, d / "lowbit.pte")),
            ("executorch-xnnpack", "lowbit-dw-xnnpack"): (executorch_lowbit, (qmodel, x, d / "dwx.pte", "xnnpack")),
        }
        runners, sizes = {}, {}
        for name, (make, args) in forms.items():
            t0 = time.perf_counter()
            runners[name] = make(*args)
            sizes[name] = args[2].stat().st_size
            took = round(time.perf_counter() - t0, 1)
            print(json.dumps({"student": key, "runtime": name[0], "form": name[1], "export_s": took}), flush=True)
        for t in threads:
            set_threads(t)
            fns = {name: make_fn(t) for name, make_fn in runners.items()}
            lat = measure(fns, rounds, reps)
            best_fp32 = min(v for (rt, form), v in lat.items() if form == "fp32")
            best_int8 = min(v for (rt, form), v in lat.items() if form == "int8")
            for (rt, form), v in lat.items():
                print(json.dumps({
                    "student": key, "scheme": scheme if form.startswith("lowbit") else None, "runtime": rt,
                    "form": form, "threads": t, "latency_ms": round(1000 * v, 3), "bytes": sizes[(rt, form)],
                    "top1": None, "agreement": None,
                    "speedup_vs_best_fp32_runtime": round(best_fp32 / v, 3),
                    "speedup_vs_best_int8_runtime": round(best_int8 / v, 3),
                    "cpu": platform.processor() or platform.machine(),
                }), flush=True)  # fmt: skip
        if prof:
            set_threads(threads[0])
            for form in ("lowbit", "dwx"):
                us = profile(d / f"{form}.pte", x)
                print(json.dumps({"student": key, "form": form, "threads": threads[0], "profile_us": us}), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--students", nargs="*", choices=list(STUDENTS))
    p.add_argument("--threads", type=int, nargs="*")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--profile", action="store_true")
    a = p.parse_args(argv)
    keys = a.students or (["mobilenet_v2_32"] if a.quick else list(STUDENTS))
    threads = a.threads or ([1] if a.quick else [1, 2])
    rounds = a.rounds or (5 if a.quick else 11)
    for key in keys:
        size = STUDENTS[key][1]
        reps = 5 if size >= 224 else 30
        bench_student(key, threads, rounds, reps, prof=a.profile)


if __name__ == "__main__":
    main()
