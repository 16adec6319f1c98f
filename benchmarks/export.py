"""End to end: a packed ternary MobileNetV2 against its fp32 form (latency, bytes), and how
often the exported students agree with the trained ones.

    python -m benchmarks.export                  # latency + bytes, 1 and 2 threads, both heads
    python -m benchmarks.export --quick          # one thread, ternary head only, under a minute
    python -m benchmarks.export --agreement      # also train each scheme on digits and compare

Latency: MobileNetV2 at ImageNet size (224x224, 1000 classes), batch 1, random init,
quantized with ``twn`` and with ``ttq`` (keep_first: the 3-channel stem stays fp32, as
in the papers; depthwise convs are ternary in training but run fp32 with their
dequantized weights, since the packed convs are groups=1). TTQ's two scales per channel
need two integer dot products per output where TWN needs one. ``head`` says whether the
1280x1000 classifier is ternary (``keep_last=False``) or fp32 (``keep_last=True``: 5 MB
on its own). The candidates run interleaved, round by round (benchmarks/kernels.py
explains why):

- ``fp32``: the float model as built and trained: eager, NCHW, BatchNorm in place;
- ``fp32_opt``: that model through the same export (BN folded, channels-last), the
  strongest fp32 baseline we can make with the tricks the packed model uses;
- ``packed``: ``students.export(qmodel)``.

``speedup`` = median over rounds of t(fp32) / t(packed); ``speedup_vs_opt`` likewise
against fp32_opt; ``*_best`` ratios of the fastest rounds; ``*_cpu`` (one thread only)
the same median ratios of the thread's CPU time, which a busy machine disturbs least. Bytes: ``torch.save`` of
the fp32 state dict vs the ``students.save_exported`` file; ``compression`` = their ratio.

Agreement: a cifar-variant MobileNetV2 (alpha 0.25, 1 channel, 8x8) trained on
scikit-learn digits under each scheme; top-1 agreement of the exported model with the
trained one (eval mode) on all 1797 images, and the accuracy of each. ``act_qat``: trained
and evaluated with ``students.simulate_export`` (the kernels' int8 activation rounding in
training; the export's arithmetic in eval), or without (fp activations in training and eval,
int8 in the export).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import students
from kernels import _cpu

SCHEMES = tuple(students.schemes_with("packed"))  # the schemes with a packed form


def _time(fn, x: torch.Tensor, reps: int) -> tuple[float, float]:
    """Mean (wall, this thread's CPU) seconds per call."""
    t0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(reps):
        fn(x)
    return (time.perf_counter() - t0) / reps, (time.thread_time() - c0) / reps


def measure(fns: dict[str, nn.Module], x: torch.Tensor, rounds: int, reps: int) -> tuple[dict, dict]:
    """Per-round mean wall and thread-CPU time of each candidate; the order alternates by round."""
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn(x)
        for r in range(rounds):
            for name in list(fns) if r % 2 == 0 else list(reversed(fns)):
                w, c = _time(fns[name], x, reps)
                wall[name].append(w)
                cpu[name].append(c)
    return wall, cpu


def _file_bytes(write) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        write(path)
        return path.stat().st_size


def latency(schemes: list[str], threads: list[int], heads: list[str], rounds: int, reps: int) -> None:
    torch.manual_seed(0)
    arch = {"name": "mobilenet_v2", "num_classes": 1000}
    fp = students.create_model(**arch).eval()
    fp_opt = students.export(fp)
    fp_bytes = _file_bytes(lambda p: torch.save(fp.state_dict(), p))
    x = torch.randn(1, 3, 224, 224)
    for scheme, head in [(s, h) for s in schemes for h in heads]:
        q = students.quantize(fp, scheme, keep_last=head == "fp32").eval()
        packed = students.export(q)
        packed_bytes = _file_bytes(lambda p, m=packed: students.save_exported(m, p, arch))
        for t in threads:
            torch.set_num_threads(t)
            tm, cpu = measure({"fp32": fp, "fp32_opt": fp_opt, "packed": packed}, x, rounds, reps)
            ratio = lambda a, b, tm=tm: statistics.median(p / q for p, q in zip(tm[a], tm[b], strict=True))
            # One thread runs every kernel on this thread, so its CPU time leaves out the time the
            # shared machine's other work took from us: the steadiest ratio when cores are busy.
            cpu_ratio = lambda a, b, c=cpu: statistics.median(p / q for p, q in zip(c[a], c[b], strict=True))
            cpu_cols = {"speedup_cpu": round(cpu_ratio("fp32", "packed"), 2),
                        "speedup_vs_opt_cpu": round(cpu_ratio("fp32_opt", "packed"), 2)} if t == 1 else {}  # fmt: skip
            row = {
                "bench": "mobilenet_v2_latency", "scheme": scheme, "head": head, "threads": t, "batch": 1,
                "speedup": round(ratio("fp32", "packed"), 2),
                "speedup_vs_opt": round(ratio("fp32_opt", "packed"), 2),
                "speedup_best": round(min(tm["fp32"]) / min(tm["packed"]), 2),
                "speedup_vs_opt_best": round(min(tm["fp32_opt"]) / min(tm["packed"]), 2), **cpu_cols,
                **{f"{k}_ms": round(statistics.median(v) * 1e3, 2) for k, v in tm.items()},
                "fp32_bytes": fp_bytes, "packed_bytes": packed_bytes,
                "compression": round(fp_bytes / packed_bytes, 2), "rounds": rounds,
                "isa": _cpu.isa() if _cpu.backend() == "cpp" else "torch-reference",
            }  # fmt: skip
            print(json.dumps(row), flush=True)


def agreement(schemes: list[str], steps: int, batch: int, qat: list[bool]) -> None:
    from distill.data import load_split, pack_source  # distill sits above students: import late

    torch.set_num_threads(1)
    arch = {"name": "mobilenet_v2", "num_classes": 10, "in_chans": 1, "variant": "cifar", "width_mult": 0.25}
    with tempfile.TemporaryDirectory() as tmp:
        meta = pack_source("sklearn-digits", Path(tmp), shard_size=100, val_per_class=30)
        xt, yt = load_split(Path(tmp), meta, "train")
        xv, yv = load_split(Path(tmp), meta, "val")
    x, y = torch.cat([xt, xv]), torch.cat([yt, yv])
    for scheme, sim in [(s, q) for s in schemes for q in qat]:
        torch.manual_seed(0)
        model = students.quantize(students.create_model(**arch), scheme)
        if sim:
            students.simulate_export(model)
        t0 = time.perf_counter()
        train(model, xt, yt, steps, batch)
        train_s = time.perf_counter() - t0
        with torch.no_grad():
            ref = model.eval()(x).argmax(1)
            out = students.export(model)(x).argmax(1)
        row = {
            "bench": "export_agreement", "scheme": scheme, "act_qat": sim, "images": len(x), "steps": steps,
            "agreement": round(float((out == ref).float().mean()), 5), "differ": int((out != ref).sum()),
            "acc_trained": round(float((ref == y).float().mean()), 4),
            "acc_exported": round(float((out == y).float().mean()), 4), "train_s": round(train_s, 1),
        }  # fmt: skip
        print(json.dumps(row), flush=True)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, lr: float = 3e-3) -> None:
    """A plain Adam loop with a one-cycle schedule: enough for non-trivial weights and BN statistics."""
    opt = torch.optim.Adam(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        students.clip_latent_(model)
    model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one thread, ternary head, few rounds")
    ap.add_argument("--threads", nargs="+", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--agreement", action="store_true", help="also train on digits and measure agreement")
    ap.add_argument("--schemes", nargs="+", choices=SCHEMES, default=list(SCHEMES))
    ap.add_argument("--steps", type=int, default=400, help="training steps per scheme (--agreement)")
    ap.add_argument("--qat", choices=["off", "on", "both"], default="both",
                    help="train with students.simulate_export (--agreement)")  # fmt: skip
    args = ap.parse_args(argv)
    if _cpu.backend() != "cpp":
        print("warning: compiled kernels unavailable; timing the pure-torch reference", file=sys.stderr)
    if args.quick:
        schemes, threads, heads, rounds = ["twn", "ttq"], [1], ["ternary"], 7
    else:
        schemes, threads, heads, rounds = ["twn", "ttq"], [1, 2], ["ternary", "fp32"], 15
    latency(schemes, args.threads or threads, heads, args.rounds or rounds, reps=2)
    if args.agreement:
        qat = {"off": [False], "on": [True], "both": [False, True]}[args.qat]
        agreement(args.schemes, args.steps, batch=64, qat=qat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
