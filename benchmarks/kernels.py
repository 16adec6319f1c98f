"""Packed ternary/binary linear kernels against torch fp32 and int8 dynamic quantization.

    python -m benchmarks.kernels            # the full set
    python -m benchmarks.kernels --quick    # a subset, under a minute
    python -m benchmarks.kernels --layers   # MobileNetV2's real layer shapes vs onnxruntime
                                            # fp32 / int8 (benchmarks/kernel_layers.py)

Prints one JSON object per line. The machines are shared and noisy, so each
measurement interleaves the candidates (ours, fp32 nn.Linear, int8
quantize_dynamic Linear) round by round, in short rounds, and:

- ``speedup_vs_fp32`` / ``speedup_vs_int8``: median over rounds of the per-round
  time ratio;
- ``*_best``: ratio of each candidate's fastest round, the least disturbed one
  (with two threads on a busy 2-core machine, a thread that waits for a core
  turns microseconds into milliseconds for every candidate alike).

Absolute times (median, microseconds) are reported but should not be compared
across runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from kernels import _cpu, ops
from kernels.packing import pack_binary, pack_ternary

SHAPES = [(1024, 1024), (4096, 4096), (1280, 1000)]
MS = [1, 8, 64]
THREADS = [1, 2]
OPS = ["ternary_linear", "xnor_linear", "binary_linear"]


def _int8_dynamic(linear: nn.Linear) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)


def _packed_fn(op: str, k: int, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    scale = torch.rand(n, generator=g) + 0.5
    bias = torch.randn(n, generator=g)
    if op == "ternary_linear":
        w = pack_ternary(torch.randint(-1, 2, (n, k), generator=g))
        return lambda x: ops.ternary_linear(x, w, k, scale, None, bias)
    w = pack_binary(torch.randint(0, 2, (n, k), generator=g) * 2 - 1)
    fn = ops.xnor_linear if op == "xnor_linear" else ops.binary_linear
    return lambda x: fn(x, w, k, scale, bias)


def _time_once(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return (time.perf_counter() - t0) / reps


def measure(
    fns: dict[str, Callable], x: torch.Tensor, rounds: int, target_s: float
) -> dict[str, list[float]]:
    """Per-round mean time of each candidate; candidates alternate inside every round."""
    reps = {}
    for name, fn in fns.items():
        fn(x)  # warm up (and pick a repetition count that fills target_s)
        reps[name] = max(1, min(1000, int(target_s / max(_time_once(fn, x, 1), 1e-7))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for name in order:
            times[name].append(_time_once(fns[name], x, reps[name]))
    return times


def _ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def run(ops_: list[str], shapes, ms, threads, rounds: int, target_s: float) -> None:
    for t in threads:
        torch.set_num_threads(t)
        for k, n in shapes:
            lin = nn.Linear(k, n).eval()
            q8 = _int8_dynamic(lin).eval()
            for op in ops_:
                ours = _packed_fn(op, k, n)
                for m in ms:
                    x = torch.randn(m, k)
                    with torch.inference_mode():
                        tm = measure({"ours": ours, "fp32": lin, "int8": q8}, x, rounds, target_s)
                    row = {
                        "op": op,
                        "m": m,
                        "k": k,
                        "n": n,
                        "threads": t,
                        "speedup_vs_fp32": round(_ratio(tm["fp32"], tm["ours"]), 2),
                        "speedup_vs_int8": round(_ratio(tm["int8"], tm["ours"]), 2),
                        "speedup_vs_fp32_best": round(min(tm["fp32"]) / min(tm["ours"]), 2),
                        "speedup_vs_int8_best": round(min(tm["int8"]) / min(tm["ours"]), 2),
                        "ours_us": round(statistics.median(tm["ours"]) * 1e6, 1),
                        "fp32_us": round(statistics.median(tm["fp32"]) * 1e6, 1),
                        "int8_us": round(statistics.median(tm["int8"]) * 1e6, 1),
                        "rounds": rounds,
                        "isa": _cpu.isa() if _cpu.backend() == "cpp" else "torch-reference",
                    }
                    print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a subset that runs in under a minute")
    ap.add_argument("--ops", nargs="+", choices=OPS, default=None)
    ap.add_argument("--threads", nargs="+", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--layers", action="store_true", help="MobileNetV2 layer shapes against onnxruntime")
    args = ap.parse_args(argv)
    if _cpu.backend() != "cpp":
        print("warning: compiled kernels unavailable; timing the pure-torch reference", file=sys.stderr)
    if args.layers:
        from benchmarks import kernel_layers

        models = ["mbv2_w0.5_32"] if args.quick else list(kernel_layers.MODELS)
        threads = args.threads or ([1] if args.quick else THREADS)
        kernel_layers.run(models, threads, args.rounds or (7 if args.quick else 11), 0.004)
        return 0
    if args.quick:
        ops_, shapes, ms, threads, rounds, target = (
            ["ternary_linear", "xnor_linear"],
            SHAPES[:2],
            [1, 8],
            [1],
            9,
            0.004,
        )
    else:
        ops_, shapes, ms, threads, rounds, target = OPS, SHAPES, MS, THREADS, 15, 0.004
    run(args.ops or ops_, shapes, ms, args.threads or threads, args.rounds or rounds, target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
