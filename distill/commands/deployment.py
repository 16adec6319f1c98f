"""The trained student as files for ONNX Runtime, ExecuTorch and the packed kernels, each
validated by running it in its own runtime.

    distill export RUN_DIR --to onnx|executorch|packed [--int8 | --kernels] [--out FILE]
    output.export: [onnx, executorch, {to: onnx, int8: true}]      # distill run exports at the end

A file's entry in the report: top-1 on the validation split, top-1 agreement with the trained
student, bytes on disk, and batch-1 latency at 1 and 2 threads measured interleaved with the
trained student in eager PyTorch (the median of rounds that alternate the two, so a shared
machine's load falls on both alike). ExecuTorch files also say which operators stayed outside
the XNNPACK delegate. A sidecar ``FILE.json`` keeps how the file was made, for ``distill eval``.

Which form a target gets (``student_form``): a float student exports as is (fp32, or int8 with
``int8``: calibrated on ``output.calibration_batches`` training batches); a ternary/binary
student exports its portable form (``students.deploy.portable``: exact int8 weights, any
runtime), or with ``kernels`` (ExecuTorch only) its packed layers as the project's ExecuTorch
custom kernels (``students.deploy.executorch_lowbit``: 2-/1-bit weights, fused MobileNetV2
blocks; the runtime must load kernels/executorch's library); ``packed`` is the project's own
2-/1-bit file for PyTorch (students.export).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.data import CorruptCounter, DatasetMeta, collate_keys, load_split, train_loader
from distill.driver.report import export_summary_line, write_report
from distill.spec import ExportSpec, JobSpec, SpecError
from students import deploy
from students.deploy import DeployError

SUFFIX = {"onnx": ".onnx", "executorch": ".pte", "packed": ".pt"}
RUNTIME = {"onnx": "onnxruntime", "executorch": "executorch", "packed": "torch"}
THREADS = (1, 2)


def default_file(run_dir: Path, req: ExportSpec) -> Path:
    tag = "-int8" if req.int8 else "-lowbit" if req.kernels else ""
    return Path(run_dir) / "export" / f"student{tag}{SUFFIX[req.to]}"


def describe(req: ExportSpec) -> str:
    """The request as the command line says it, for errors."""
    return f"export --to {req.to}{' --int8' if req.int8 else ''}{' --kernels' if req.kernels else ''}"


def calibration_batches(spec: JobSpec, root: Path, meta: DatasetMeta) -> list[Tensor]:
    """``output.calibration_batches`` shuffled training batches, without augmentation."""
    n = spec.output.calibration_batches
    loader = train_loader(root, meta, batch_size=spec.trainer.batch_size, steps_per_epoch=n, rank=0, world=1,
                          seed=spec.seed, shuffle_buffer=spec.data.shuffle_buffer, num_workers=0,
                          crop_padding=0, hflip=False, counter=CorruptCounter("skip"))
    return [collate_keys(b)[0] for b in itertools.islice(iter(loader), n)]


def student_form(student: nn.Module, target: str, int8: bool, kernels: bool = False) -> tuple[nn.Module, str]:
    """(the module the target's exporter gets, the form's name) for this student."""
    from students.deploy.portable_model import is_low_bit, portable

    low_bit = is_low_bit(student)
    if kernels:
        if target != "executorch":
            raise DeployError("--kernels applies to --to executorch (the project's ExecuTorch custom kernels)")
        if not low_bit:
            raise DeployError("--kernels needs a ternary/binary student (student.quantization.scheme twn, ttq, "
                              "binary-connect or xnor); a float student exports to XNNPACK as it is")
        if int8:
            raise DeployError("--kernels and --int8 exclude each other: the custom kernels run 2-/1-bit weights")
        return student, "lowbit"
    if target == "packed":
        if not low_bit:
            raise DeployError("--to packed needs a ternary/binary student (student.quantization.scheme twn, ttq, "
                              "binary-connect or xnor); a float student exports to onnx or executorch")
        if int8:
            raise DeployError("--int8 applies to onnx and executorch; a packed file is already 2-/1-bit")
        return student, "packed"
    if low_bit and int8:
        raise DeployError("this student is low-bit; its portable form already stores int8 weights "
                          "(export it without --int8)")
    if low_bit:
        return portable(student, "float" if target == "executorch" else "int8"), "portable"
    return student, "int8" if int8 else "fp32"


def export_file(spec: JobSpec, root: Path, meta: DatasetMeta, student: nn.Module, req: ExportSpec,
                out: Path) -> dict[str, Any]:
    """Write one export of ``student`` to ``out`` (and its sidecar); returns what the sidecar holds."""
    target, int8 = req.to, req.int8
    model, form = student_form(student, target, int8, req.kernels)
    example = load_split(root, meta, "val")[0][:2]
    calib = calibration_batches(spec, root, meta) if int8 else None
    made: dict[str, Any] = {"target": target, "runtime": RUNTIME[target], "form": form, "int8": int8,
                            "calibration_batches": len(calib) if calib else 0}
    if target == "onnx":
        deploy.to_onnx(model.eval(), example, out, calibration=calib)
    elif form == "lowbit":
        from students.deploy.executorch_lowbit import export_lowbit

        made["program"] = export_lowbit(model.eval(), example[:1], out)
    elif target == "executorch":
        d = deploy.to_executorch(model.eval(), example, out, calibration=calib)
        made["delegation"] = {"subgraphs": d.subgraphs, "delegated_nodes": d.delegated_nodes,
                              "undelegated": d.undelegated, "undelegated_compute": d.undelegated_compute,
                              "summary": d.summary()}  # fmt: skip
    else:
        import students

        arch = {"name": spec.student.arch, "num_classes": meta.num_classes, "in_chans": meta.channels,
                "variant": spec.student.variant, **spec.student.options}
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            students.save_exported(students.export(student), out, arch=arch)
        except ValueError as exc:
            raise DeployError(str(exc)) from None
    Path(f"{out}.json").write_text(json.dumps(made, indent=2))
    return made


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Python's cycle collector off (after one collection): it runs inside whichever call crosses
    its allocation threshold, 0.5 ms at a time next to torch and executorch, in any candidate."""
    gc.collect()
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def interleaved_ms(candidates: dict[str, Callable[[Tensor], Any]], x: Tensor, rounds: int = 11,
                   target_s: float = 0.005, settle_s: float = 0.02) -> dict[str, float]:
    """Median per-call milliseconds of each candidate over ``rounds`` that alternate their order; a
    round times as many calls of a candidate as fill ``target_s`` (so fast files are not timer noise).

    Before each candidate's calls the process idles ``settle_s``: every runtime's worker threads
    spin for a while after a call (onnxruntime's, OpenMP's, ExecuTorch's pthreadpool), and with two
    threads on two cores the previous candidate's spinning workers took the core the next one's
    needed (every runtime ran 1.5-2x slower on two threads than on one, measured)."""
    times: dict[str, list[float]] = {k: [] for k in candidates}
    reps: dict[str, int] = {}
    names = list(candidates)
    with no_gc(), torch.inference_mode():
        for name, fn in candidates.items():
            fn(x)
            start = time.perf_counter()
            fn(x)
            reps[name] = max(1, min(50, int(target_s / max(time.perf_counter() - start, 1e-6))))
        for r in range(rounds):
            for name in names if r % 2 == 0 else reversed(names):
                time.sleep(settle_s)
                start = time.perf_counter()
                for _ in range(reps[name]):
                    candidates[name](x)
                times[name].append((time.perf_counter() - start) / reps[name])
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def eager(model: nn.Module, threads: int) -> Callable[[Tensor], Tensor]:
    """``model`` on ``threads`` torch intra-op threads (the pool is resized only when it differs:
    resizing it on every call, next to ExecuTorch's own pool, costs more than the call)."""
    def run(x: Tensor) -> Tensor:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return model(x)

    return run


def validate_file(path: Path, student: nn.Module, x_val: Tensor, y_val: Tensor,
                  threads: tuple[int, ...] = THREADS, rounds: int = 11) -> dict[str, Any]:
    """The report entry of one exported file, run in its own runtime (module docstring)."""
    student = student.eval()
    with torch.inference_mode():
        ref = torch.cat([student(xb) for xb in x_val.split(512)]).argmax(1)
    pred = deploy.predict(deploy.load(path, threads=max(threads)), x_val).argmax(1)
    made = json.loads(Path(f"{path}.json").read_text()) if Path(f"{path}.json").is_file() else {}
    entry: dict[str, Any] = {"file": str(path), "runtime": deploy.runner.RUNTIMES[path.suffix],
                             "form": made.get("form"), "bytes": path.stat().st_size,
                             "top1": float((pred == y_val).float().mean()),
                             "agreement_top1": float((pred == ref).float().mean()),
                             "student_top1": float((ref == y_val).float().mean()),
                             "latency_ms": {}, "eager_latency_ms": {}, "speedup_vs_eager": {}}  # fmt: skip
    x1, before = x_val[:1], torch.get_num_threads()
    try:
        for t in threads:
            ms = interleaved_ms({"file": deploy.load(path, threads=t), "eager": eager(student, t)}, x1, rounds)
            entry["latency_ms"][str(t)] = round(ms["file"], 4)
            entry["eager_latency_ms"][str(t)] = round(ms["eager"], 4)
            entry["speedup_vs_eager"][str(t)] = round(ms["eager"] / ms["file"], 3)
    finally:
        torch.set_num_threads(before)
    if "delegation" in made:
        entry["delegation"] = made["delegation"]
    return entry


def export_and_validate(spec: JobSpec, root: Path, meta: DatasetMeta, student: nn.Module, run_dir: Path,
                        requests: list[ExportSpec]) -> list[dict[str, Any]]:
    """Every requested export of ``student``, written and validated: the report's ``exports``."""
    x_val, y_val = load_split(root, meta, "val")
    entries = []
    for req in requests:
        out = Path(req.file) if req.file else default_file(run_dir, req)
        try:
            export_file(spec, root, meta, student, req, out)
        except DeployError as exc:
            raise SpecError(f"{describe(req)}: {exc}") from None
        entries.append(validate_file(out, student, x_val, y_val))
    return entries


def validate_run_exports(run_dir: Path, student: nn.Module, root: Path, meta: DatasetMeta) -> list[dict[str, Any]]:
    """``distill eval``: every exported file in ``RUN_DIR/export`` validated again."""
    files = sorted(p for p in (Path(run_dir) / "export").glob("*") if p.suffix in SUFFIX.values())
    if not files:
        return []
    x_val, y_val = load_split(root, meta, "val")
    return [validate_file(p, student, x_val, y_val) for p in files]


def record_exports(run_dir: Path, entries: list[dict[str, Any]]) -> None:
    """Put ``entries`` into ``RUN_DIR/report.json``'s ``exports`` (an entry for the same file is replaced)."""

    path = Path(run_dir) / "report.json"
    if not path.is_file():
        return
    report = json.loads(path.read_text())
    new = {e["file"] for e in entries}
    report["exports"] = [e for e in report.get("exports", []) if e["file"] not in new] + entries
    write_report(report, path)


def add_export_command(sub: Any) -> None:
    """The ``distill export`` subcommand (registered by ``distill.cli``)."""
    p = sub.add_parser("export", help="export a trained student to ONNX Runtime, ExecuTorch or the packed kernels",
                       description="Write the trained student of RUN_DIR as a runtime file and validate it there: "
                                   "top-1 on the validation split, agreement with the trained student, bytes, "
                                   "batch-1 latency at 1 and 2 threads (interleaved with eager PyTorch). Float "
                                   "students export fp32 (or int8 with --int8); ternary/binary students export "
                                   "their portable form (exact int8 weights), with --kernels an ExecuTorch program "
                                   "on the project's 2-/1-bit custom kernels, or with --to packed the 2-/1-bit file.")
    p.add_argument("run_dir", type=Path, help="run folder (student.pt + config.yaml) or a student.pt")
    p.add_argument("--to", required=True, choices=tuple(SUFFIX), help="target runtime")
    p.add_argument("--int8", action="store_true", help="static int8, calibrated on output.calibration_batches "
                                                       "training batches (float students)")
    p.add_argument("--kernels", action="store_true", help="ternary/binary students, --to executorch: the packed "
                                                          "layers as the project's ExecuTorch custom kernels")
    p.add_argument("--out", type=Path, default=None,
                   help="file to write (default RUN_DIR/export/student[-int8|-lowbit].EXT)")
    p.add_argument("--config", type=Path, default=None, help="job spec (default: config.yaml beside the weights)")
    p.add_argument("--json", action="store_true", help="print the file's entry as JSON")
    p.add_argument("--rounds", type=int, default=11, help="interleaved latency rounds per thread count (default 11)")


def cmd_export(args: Any) -> int:
    from distill.driver.stages import load_student

    out = args.out
    if args.rounds < 1:
        raise SpecError("--rounds must be at least 1")
    if out is not None and out.suffix != SUFFIX[args.to]:
        raise SpecError(f"--out {out}: a {args.to} file must end in {SUFFIX[args.to]}")
    req = ExportSpec(to=args.to, int8=args.int8, kernels=args.kernels)
    spec, root, meta, student, _, weights = load_student(args.run_dir, args.config)
    run_dir = weights.parent
    out = out or default_file(run_dir, req)
    try:
        export_file(spec, root, meta, student, req, out)
    except DeployError as exc:
        raise SpecError(f"{describe(req)}: {exc}") from None
    x_val, y_val = load_split(root, meta, "val")
    entry = validate_file(out, student, x_val, y_val, rounds=args.rounds)
    record_exports(run_dir, [entry])
    print(json.dumps(entry) if args.json else export_summary_line(entry))
    return 0
