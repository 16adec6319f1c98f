"""The student in every runtime a user would deploy it with, side by side, interleaved in one run.

    python -m benchmarks.deploy                # all students, 1 and 2 threads, every form
    python -m benchmarks.deploy --quick        # MobileNetV2 (CIFAR size) only, 1 thread (< 3 min idle)

One JSON line per (student, runtime, form, threads): latency_ms (median over interleaved rounds
of the batch-1 latency), bytes (the file a user ships), top1 / agreement, and
speedup_vs_best_fp32_runtime / speedup_vs_best_int8_runtime (the fastest of onnxruntime and
ExecuTorch XNNPACK in fp32 / in int8, over this row's latency; > 1 means this row is faster).

Students: MobileNetV2 width 0.5 at CIFAR size (32x32) and MobileNetV2 at 224, MobileNet v1 alpha
0.5 and ShuffleNet v2 0.5x at CIFAR size. Latency and bytes come from the student at that shape
(10 classes at 32, 1000 at 224); its weights are not trained (latency does not depend on their
values), and its BatchNorm statistics are drawn at random so that int8 calibration sees
realistic ranges. top1 / agreement come from the same architecture trained on scikit-learn's
digits (8x8, one channel; a short Adam run) and exported to the same form: training four
students on CIFAR-10 here takes an hour, and agreement with a trained student is what tells an
export apart (a fresh net answers nearly the same class for every input). CIFAR-10 accuracy of
exported files comes from ``distill export RUN --to ... --json`` on CIFAR runs (BENCHMARKS.md).

Forms are entries of ``FORMS`` (``Form``): runtime, form name, the scheme of the student it
takes (None: the float student), and ``make(model, example, path, calibration)`` which writes
the file and returns ``load(threads) -> callable``. ``lowbit`` (the TWN student's packed layers,
depthwise convs, stem and fused MobileNetV2 blocks as ExecuTorch custom kernels,
students.deploy.executorch_lowbit) and ``lowbit-xnor`` (an XNOR-Net student, binary weights and
activations) are such entries; a form whose runtime is missing prints a row with ``skipped`` and
the reason. Low-bit students quantize their classifier too (``LOWBIT_OPTIONS``: at 224 the fp32
1280x1000 classifier alone is 5.1 MB, a third of the fp32 file); the stem stays fp32.

    python -m benchmarks.deploy --students mobilenet_v2_224 --profile   # + ETDump time per op of lowbit files

``--profile`` prints, for each ``lowbit`` file and the XNNPACK int8 file it is measured against, the
mean microseconds per inference of every custom op and delegate call (and XNNPACK's ops inside
them) from ExecuTorch's ETDump, at each thread count. ``--keep DIR`` keeps the exported files (named
``<student>-<runtime>-<form>.<ext>``) for ``--time-file`` runs of your own.

A file's profile by symbol (the kernels' share of the time; Linux perf):

    python -m benchmarks.deploy --time-file FILE.pte --threads 1 --size 224 --seconds 20 &
    perf record -F 5000 -p $! -o perf.data -- sleep 10; perf report -i perf.data --sort symbol

``--time-file FILE --threads T --size S [--gap-us G]`` prints one file's ms per call in this process
alone; with ``--gap-us``, per single call after G microseconds of the caller's own work (see
``time_file``); with ``--series N``, one JSON line with the ms per call of N back-to-back batches of
300 calls in this process (``series_ms``: does a two-thread program drift within a process?).

``--files DIR`` times the files an earlier ``--keep DIR`` run wrote (each student's, every form
with a file), in processes of their own, without training or exporting again: more processes
per file (``--rounds``) for the same files, e.g. two threads on a noisy host:

    python -m benchmarks.deploy --files runs/deploy-files-2 --students mobilenet_v2_32 --threads 2 --rounds 27 \
        --forms fp32 int8 lowbit lowbit-xnor

``--isolate`` times each file in ``--rounds // 3`` processes of its own (``--time-file``, 5
interleaved rounds each; the row is the median of those processes), the files taking turns: with
two threads on a two-core machine, the worker threads that one runtime leaves spinning or parked
in a shared process slowed the next runtime's calls (every runtime measured slower on two threads
than on one in-process; in processes of their own they were not). The eager PyTorch row is then
left out (it is no file).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import students
from distill.commands.deployment import eager, interleaved_ms
from students import deploy
from students.deploy.portable_model import portable

Loader = Callable[[int], Callable[[Tensor], Tensor]]

STUDENTS = {
    "mobilenet_v2_32": ({"name": "mobilenet_v2", "variant": "cifar", "width_mult": 0.5}, 32, 10),
    "mobilenet_v2_224": ({"name": "mobilenet_v2", "variant": "imagenet"}, 224, 1000),
    "mobilenet_v1_32": ({"name": "mobilenet_v1", "variant": "cifar", "alpha": 0.5}, 32, 10),
    "shufflenet_v2_32": ({"name": "shufflenet_v2", "variant": "cifar", "width": 0.5}, 32, 10),
}
LOWBIT_SCHEME = "twn"
# students.quantize options of the low-bit students here. XNOR keeps its depthwise convs fp32: the
# binary-input depthwise conv (K * conv(sgn(x), W)) has no custom kernel and would run on portable ops.
LOWBIT_OPTIONS = {"twn": {"keep_last": False}, "xnor": {"keep_last": False, "skip_depthwise": True}}


@dataclasses.dataclass(frozen=True)
class Form:
    runtime: str
    form: str
    scheme: str | None  # the student it takes: None (float) or a students.quantize scheme
    make: Callable[[nn.Module, Tensor, Path, list[Tensor]], Loader]
    suffix: str = ""  # "" = no file (eager)
    quick: bool = True


def _eager(model: nn.Module, example: Tensor, path: Path, calib: list[Tensor]) -> Loader:
    torch.save(model.state_dict(), path)
    return lambda t: eager(model, t)


def _file(write: Callable[[nn.Module, Tensor, Path, list[Tensor]], Any]) -> Callable[..., Loader]:
    def make(model: nn.Module, example: Tensor, path: Path, calib: list[Tensor]) -> Loader:
        write(model, example, path, calib)
        return lambda t: deploy.load(path, threads=t)

    return make


def _lowbit(model: nn.Module, example: Tensor, path: Path, calib: list[Tensor]) -> Loader:
    from students.deploy.executorch_lowbit import export_lowbit

    export_lowbit(model, example[:1], path)
    return lambda t: deploy.load(path, threads=t)  # the runner registers the custom kernels


FORMS: list[Form] = [
    Form("torch", "fp32", None, _eager, ".pt"),
    Form("onnxruntime", "fp32", None, _file(lambda m, x, p, c: deploy.to_onnx(m, x, p)), ".onnx"),
    Form("onnxruntime", "int8", None, _file(lambda m, x, p, c: deploy.to_onnx(m, x, p, calibration=c)), ".onnx"),
    Form("executorch", "fp32", None, _file(lambda m, x, p, c: deploy.to_executorch(m, x, p)), ".pte"),
    Form("executorch", "int8", None, _file(lambda m, x, p, c: deploy.to_executorch(m, x, p, calibration=c)), ".pte"),
    Form("torch", "packed", LOWBIT_SCHEME,
         _file(lambda m, x, p, c: students.save_exported(students.export(m), p, _arch_of(m))), ".pt"),
    Form("onnxruntime", "portable", LOWBIT_SCHEME,
         _file(lambda m, x, p, c: deploy.to_onnx(portable(m, "int8"), x, p)), ".onnx", quick=False),
    Form("executorch", "portable", LOWBIT_SCHEME,
         _file(lambda m, x, p, c: deploy.to_executorch(portable(m, "float"), x, p)), ".pte", quick=False),
    Form("executorch", "lowbit", LOWBIT_SCHEME, _lowbit, ".pte"),
    Form("executorch", "lowbit-xnor", "xnor", _lowbit, ".pte", quick=False),
]  # fmt: skip


def _arch_of(model: nn.Module) -> dict[str, Any]:
    return model.deploy_arch  # set by build(): save_exported needs the create_model arguments


@torch.no_grad()
def realistic_bn_(model: nn.Module) -> nn.Module:
    """Give every BatchNorm trained-looking statistics and affine terms (module docstring): a fresh
    BN is the identity, which no trained student has, and timing/folding should see real ranges."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.1, 0.1)
    return model


def build(arch: dict[str, Any], num_classes: int, in_chans: int, scheme: str | None) -> nn.Module:
    torch.manual_seed(0)
    model = students.create_model(**arch, num_classes=num_classes, in_chans=in_chans)
    realistic_bn_(model)
    model = students.quantize(model, scheme, **LOWBIT_OPTIONS.get(scheme, {})) if scheme else model
    model.deploy_arch = {**arch, "num_classes": num_classes, "in_chans": in_chans}
    return model.eval()


def digits_trained(arch: dict[str, Any], scheme: str | None, data: dict[str, Tensor], steps: int) -> nn.Module:
    from benchmarks.export import train

    model = build(arch, 10, 1, scheme)
    train(model, data["xt"], data["yt"], steps, batch=64)
    return model.eval()


def digits() -> dict[str, Tensor]:
    from distill.data import load_split, pack_source

    with tempfile.TemporaryDirectory() as tmp:
        meta = pack_source("sklearn-digits", Path(tmp), shard_size=100, val_per_class=30)
        xt, yt = load_split(Path(tmp), meta, "train")
        xv, yv = load_split(Path(tmp), meta, "val")
    return {"xt": xt, "yt": yt, "xv": xv, "yv": yv}


def accuracy(forms: list[Form], arch: dict[str, Any], data: dict[str, Tensor], steps: int, tmp: Path) -> dict:
    """(runtime, form) -> {top1, agreement} of the digits-trained student in that form."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    trained: dict[str | None, nn.Module] = {}
    calib = list(data["xt"][: 8 * 64].split(64))
    for f in forms:
        if f.scheme not in trained:
            trained[f.scheme] = digits_trained(arch, f.scheme, data, steps)
        model = trained[f.scheme]
        with torch.inference_mode():
            ref = model(data["xv"]).argmax(1)
        try:
            run = f.make(model, data["xv"][:2], tmp / f"digits-{f.runtime}-{f.form}{f.suffix}", calib)(1)
            pred = deploy.predict(run, data["xv"]).argmax(1)
        except deploy.DeployError as exc:  # a runtime missing here, or a file it cannot run: the row says why
            out[(f.runtime, f.form)] = {"accuracy_skipped": str(exc)}
            continue
        out[(f.runtime, f.form)] = {"top1": round(float((pred == data["yv"]).float().mean()), 4),
                                    "agreement": round(float((pred == ref).float().mean()), 4),
                                    "student_top1": round(float((ref == data["yv"]).float().mean()), 4)}
    return out


def latency(name: str, forms: list[Form], threads: list[int], rounds: int, acc: dict, tmp: Path,
            prof: bool = False, isolate: bool = False) -> None:
    arch, size, classes = STUDENTS[name]
    models = {s: build(arch, classes, 3, s) for s in {f.scheme for f in forms}}
    example = torch.randn(2, 3, size, size)
    calib = [torch.randn(8, 3, size, size) for _ in range(4)]
    loaders: dict[Form, Loader] = {}
    skipped: dict[Form, str] = {}
    for f in forms:
        try:
            loaders[f] = f.make(models[f.scheme], example, file_of(tmp, name, f), calib)
        except deploy.DeployError as exc:  # a runtime missing here: the row says why
            skipped[f] = str(exc)
    time_rows(name, forms, loaders, skipped, threads, rounds, acc, tmp, isolate)
    if prof:
        profile_rows(name, list(loaders), tmp, threads)


def profile_rows(name: str, forms: list[Form], folder: Path, threads: list[int]) -> None:
    """``--profile``: one row per thread count for each low-bit program and the XNNPACK int8 program
    it is measured against, with ``profile``'s microseconds per op."""
    from students.deploy.runner import _executorch_pool

    x = torch.randn(1, 3, STUDENTS[name][1], STUDENTS[name][1])
    for t in threads:
        _executorch_pool(t)
        for f in forms:
            if f.runtime == "executorch" and (f.form.startswith("lowbit") or f.form == "int8"):
                us = profile(file_of(folder, name, f), x)
                print(json.dumps({"bench": "deploy", "student": name, "form": f.form, "threads": t, "profile_us": us}))


def file_of(folder: Path, name: str, f: Form) -> Path:
    return folder / f"{name}-{f.runtime}-{f.form}{f.suffix}"


def time_rows(name: str, forms: list[Form], loaders: dict[Form, Loader | None], skipped: dict[Form, str],
              threads: list[int], rounds: int, acc: dict, folder: Path, isolate: bool) -> None:
    """Times every form in ``loaders`` at each thread count (in-process through its loader, or
    ``isolate``: its file in processes of its own, where the loader is not used) and prints one row
    per form, with its speed against the fastest fp32 and int8 runtime."""
    size = STUDENTS[name][1]
    cpu = _cpu_model()
    if isolate:
        loaders = {f: v for f, v in loaders.items() if f.runtime != "torch" or f.form != "fp32"}
        skipped.update({f: "eager PyTorch is not timed with --isolate" for f in forms if f not in loaders})
    for t in threads:
        if isolate:
            ms = isolated_ms({f: file_of(folder, name, f) for f in loaders}, size, t, rounds)
        else:
            fns = {f: load(t) for f, load in loaders.items() if load is not None}
            ms = interleaved_ms(fns, torch.randn(1, 3, size, size), rounds)
        best = {kind: min((v for f, v in ms.items() if f.form == kind and f.runtime != "torch"), default=None)
                for kind in ("fp32", "int8")}
        timing = {"processes_per_file": processes(rounds), "rounds_per_process": 5} if isolate else {"rounds": rounds}
        for f in forms:
            row: dict[str, Any] = {"bench": "deploy", "student": name, "input": [3, size, size], "runtime": f.runtime,
                                   "form": f.form, "scheme": f.scheme, "threads": t, "batch": 1}
            if f in skipped:
                print(json.dumps({**row, "skipped": skipped[f]}), flush=True)
                continue
            path = file_of(folder, name, f)
            row.update({"top1": None, "agreement": None, **acc.get((f.runtime, f.form), {})})
            row.update(latency_ms=round(ms[f], 4), bytes=path.stat().st_size if path.is_file() else None,
                       speedup_vs_best_fp32_runtime=round(best["fp32"] / ms[f], 3) if best["fp32"] else None,
                       speedup_vs_best_int8_runtime=round(best["int8"] / ms[f], 3) if best["int8"] else None,
                       accuracy_on="digits 8x8 (trained, same arch)" if acc else None, **timing, cpu=cpu)
            print(json.dumps(row), flush=True)


def time_kept_files(name: str, forms: list[Form], folder: Path, threads: list[int], rounds: int,
                    prof: bool = False) -> None:
    """``--files DIR``: times the files an earlier ``--keep DIR`` run wrote for this student (no
    training, no export, no accuracy), each in processes of its own; a form with no file is skipped.
    With ``prof``, the ``--profile`` rows of those files too."""
    present = [f for f in forms if f.suffix and file_of(folder, name, f).is_file()]
    skipped = {f: f"no file {file_of(folder, name, f).name} in {folder}" for f in forms if f not in present}
    time_rows(name, forms, dict.fromkeys(present), skipped, threads, rounds, {}, folder, True)
    if prof:
        profile_rows(name, present, folder, threads)


def processes(rounds: int) -> int:
    """Processes per file under ``--isolate``: each times 5 interleaved rounds of its own, so a
    third of ``--rounds`` keeps the run's length near an in-process one."""
    return max(1, rounds // 3)


def isolated_ms(files: dict[Any, Path], size: int, threads: int, rounds: int) -> dict[Any, float]:
    """Median over ``processes(rounds)`` processes of the milliseconds per batch-1 call of each
    file, each process timing one file (``--time-file``), the files taking turns (module
    docstring: ``--isolate``)."""
    times: dict[Any, list[float]] = {k: [] for k in files}
    keys = list(files)
    for r in range(processes(rounds)):
        for k in keys if r % 2 == 0 else reversed(keys):
            cmd = [sys.executable, "-m", "benchmarks.deploy", "--time-file", str(files[k]), "--threads", str(threads),
                   "--size", str(size)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            times[k].append(float(out.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(v) for k, v in times.items()}


def series_ms(path: Path, threads: int, size: int, batches: int, calls: int = 300) -> list[float]:
    """``--time-file F --series N``: ms per call of each of N back-to-back batches of ``calls`` calls
    in this one process, after a warm-up batch. On a shared VM a two-thread program's speed drifts
    within a process (not only between processes); the series shows when it does, and by how much."""
    run = deploy.load(path, threads=threads)
    x = torch.randn(1, 3, size, size)
    out = []
    with torch.inference_mode():
        for b in range(batches + 1):
            start = time.perf_counter()
            for _ in range(calls):
                run(x)
            if b:  # batch 0 warms up
                out.append(round(1000 * (time.perf_counter() - start) / calls, 4))
    return out


def time_file(path: Path, threads: int, size: int, seconds: float = 0.0, gap_us: float = 0.0) -> float:
    """``--time-file``: median ms per call of one exported file in this process alone (5 interleaved
    rounds); with ``seconds``, calls it for that long first (a window for a sampling profiler).
    With ``gap_us``: the median of 1,000 single calls, each after a busy ``gap_us`` on the calling
    thread (an application that does its own work between frames): a runtime's idle worker threads
    may then have gone to sleep, and the call pays for waking them."""
    run = deploy.load(path, threads=threads)
    x = torch.randn(1, 3, size, size)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        run(x)
    if gap_us <= 0:
        return interleaved_ms({"file": run}, x, rounds=5)["file"]
    times = []
    with torch.inference_mode():
        for _ in range(1000):
            resume = time.perf_counter() + gap_us * 1e-6
            while time.perf_counter() < resume:
                pass
            start = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def profile(path: Path, x: Tensor, runs: int = 20) -> dict[str, float]:
    """Mean microseconds per inference by event, from an ETDump: Method::execute (the whole run),
    each custom op, DELEGATE_CALL (all XNNPACK calls) and inside them XNNPACK's ops by kind (a
    layout change there would show as a Transpose), OPERATOR_CALL (all non-delegated ops)."""
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    from students.deploy.runner import uses_distill_kernels

    if uses_distill_kernels(path):  # a --files run has not loaded the program through the runner
        from kernels.executorch import runtime as distill_kernels

        distill_kernels.load()
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


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="MobileNetV2 at 32 only, 1 thread, fewer forms and rounds")
    ap.add_argument("--students", nargs="+", choices=list(STUDENTS), default=None)
    ap.add_argument("--threads", nargs="+", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="digits training steps per student form")
    ap.add_argument("--profile", action="store_true",
                    help="ETDump time per op of each lowbit file and the XNNPACK int8 file, at each thread count")
    ap.add_argument("--keep", type=Path, default=None, help="write the exported files here (kept) instead of a temp dir")
    ap.add_argument("--isolate", action="store_true", help="time each file in a process of its own (docstring)")
    ap.add_argument("--forms", nargs="+", choices=sorted({f.form for f in FORMS}), default=None,
                    help="only these forms (e.g. fp32 int8 lowbit): fewer files to export and time")
    ap.add_argument("--files", type=Path, default=None,
                    help="time the files an earlier --keep DIR run wrote (implies --isolate; no training or export)")
    ap.add_argument("--time-file", type=Path, help=argparse.SUPPRESS)  # the child of --isolate
    ap.add_argument("--size", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--gap-us", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--series", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.time_file:
        t = (args.threads or [1])[0]
        if args.series > 0:
            ms = series_ms(args.time_file, t, args.size, args.series)
            print(json.dumps({"bench": "deploy", "file": args.time_file.name, "threads": t, "series_ms": ms,
                              "cpu": _cpu_model()}))
        else:
            print(time_file(args.time_file, t, args.size, args.seconds, args.gap_us))
        return 0
    names = args.students or (["mobilenet_v2_32"] if args.quick else list(STUDENTS))
    threads = args.threads or ([1] if args.quick else [1, 2])
    rounds = args.rounds or (7 if args.quick else 15)
    steps = args.steps or (150 if args.quick else 400)
    forms = [f for f in FORMS if (f.quick or not args.quick) and (not args.forms or f.form in args.forms)]
    if args.files:
        if not args.files.is_dir():
            raise SystemExit(f"--files {args.files}: no such folder (give the DIR of an earlier --keep DIR run)")
        for name in names:
            time_kept_files(name, forms, args.files, threads, rounds, args.profile)
        return 0
    data = digits()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory() as tmp:
        for name in names:
            arch = STUDENTS[name][0]
            # Accuracy once per architecture: the 224 MobileNetV2 is the 32 one's architecture at another size.
            acc = accuracy(forms, {**arch, "variant": "cifar"}, data, steps, Path(tmp))
            latency(name, forms, threads, rounds, acc, Path(tmp), args.profile, args.isolate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
