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
digits (8x8, one channel; a short Adam run) and exported to the same form: there are no
trained CIFAR students on this machine, and agreement with a trained student is what tells an
export apart (a fresh net answers nearly the same class for every input).

Forms are entries of ``FORMS`` (``Form``): runtime, form name, the scheme of the student it
takes (None: the float student), and ``make(model, example, path, calibration)`` which writes
the file and returns ``load(threads) -> callable``. ``lowbit`` (packed ternary layers as
ExecuTorch custom kernels, students.deploy.executorch_lowbit) is one such entry; a form whose
code is missing prints a row with ``skipped`` and the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import tempfile
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


class Unavailable(Exception):
    """A form that cannot run here (its code or runtime is missing); the row says why."""


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
    try:
        from students.deploy.executorch_lowbit import export_lowbit, load_lowbit
    except ImportError as exc:
        raise Unavailable(f"students.deploy.executorch_lowbit not available ({exc})") from None
    export_lowbit(model, example[:1], path)
    load_lowbit(path)  # registers the custom kernels (once per process); then any runner loads the file
    return lambda t: deploy.load(path, threads=t)


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
    model = students.quantize(model, scheme) if scheme else model
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
        except (Unavailable, deploy.DeployError) as exc:
            out[(f.runtime, f.form)] = {"accuracy_skipped": str(exc)}
            continue
        pred = deploy.predict(run, data["xv"]).argmax(1)
        out[(f.runtime, f.form)] = {"top1": round(float((pred == data["yv"]).float().mean()), 4),
                                    "agreement": round(float((pred == ref).float().mean()), 4),
                                    "student_top1": round(float((ref == data["yv"]).float().mean()), 4)}
    return out


def latency(name: str, forms: list[Form], threads: list[int], rounds: int, acc: dict, tmp: Path) -> None:
    arch, size, classes = STUDENTS[name]
    models = {s: build(arch, classes, 3, s) for s in {f.scheme for f in forms}}
    example = torch.randn(2, 3, size, size)
    calib = [torch.randn(8, 3, size, size) for _ in range(4)]
    loaders: dict[Form, Loader] = {}
    skipped: dict[Form, str] = {}
    for f in forms:
        path = tmp / f"{name}-{f.runtime}-{f.form}{f.suffix}"
        try:
            loaders[f] = f.make(models[f.scheme], example, path, calib)
        except (Unavailable, deploy.DeployError) as exc:
            skipped[f] = str(exc)
    cpu = _cpu_model()
    for t in threads:
        fns = {f: load(t) for f, load in loaders.items()}
        ms = interleaved_ms(fns, example[:1], rounds)
        best = {kind: min((v for f, v in ms.items() if f.form == kind and f.runtime != "torch"), default=None)
                for kind in ("fp32", "int8")}
        for f in forms:
            row: dict[str, Any] = {"bench": "deploy", "student": name, "input": [3, size, size], "runtime": f.runtime,
                                   "form": f.form, "scheme": f.scheme, "threads": t, "batch": 1}
            if f in skipped:
                print(json.dumps({**row, "skipped": skipped[f]}), flush=True)
                continue
            path = tmp / f"{name}-{f.runtime}-{f.form}{f.suffix}"
            row.update({"top1": None, "agreement": None, **acc.get((f.runtime, f.form), {})})
            row.update(latency_ms=round(ms[f], 4), bytes=path.stat().st_size if path.is_file() else None,
                       speedup_vs_best_fp32_runtime=round(best["fp32"] / ms[f], 3) if best["fp32"] else None,
                       speedup_vs_best_int8_runtime=round(best["int8"] / ms[f], 3) if best["int8"] else None,
                       accuracy_on="digits 8x8 (trained, same arch)", rounds=rounds, cpu=cpu)
            print(json.dumps(row), flush=True)


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
    args = ap.parse_args(argv)
    names = args.students or (["mobilenet_v2_32"] if args.quick else list(STUDENTS))
    threads = args.threads or ([1] if args.quick else [1, 2])
    rounds = args.rounds or (7 if args.quick else 15)
    steps = args.steps or (150 if args.quick else 400)
    forms = [f for f in FORMS if f.quick or not args.quick]
    data = digits()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            arch = STUDENTS[name][0]
            # Accuracy once per architecture: the 224 MobileNetV2 is the 32 one's architecture at another size.
            acc = accuracy(forms, {**arch, "variant": "cifar"}, data, steps, Path(tmp))
            latency(name, forms, threads, rounds, acc, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
