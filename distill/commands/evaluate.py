"""Scoring a trained student against its teachers: for `distill run` and `distill eval`.

``distill run`` scores the teachers through the very actors that taught
(their answers as served, fp16 or top-k included). ``distill eval`` works
from files alone, long after the run: it reads the run folder's
``config.yaml`` and ``student.pt``, loads the teachers locally and scores all
of them on the spec's validation split, with no Ray. Both produce the same
report (``distill.driver.report``): accuracy, parameters, stored bytes, MACs,
measured CPU latency, compression a/a* and speed-up s/s* against each
teacher and the ensemble.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from distill.data import DatasetMeta, load_split
from distill.driver.stages import evaluate_models, load_student, logits_of
from distill.spec import JobSpec, SpecError


def export_entry(spec: JobSpec, root: Path, meta: DatasetMeta, student: nn.Module, path: Path) -> dict[str, Any]:
    """Export a low-bit student onto the packed kernels as one file, load it back as a user would,
    and score it on the validation split: top-1, top-1 agreement with the trained model, bytes on
    disk, and batch-1 latency against the same architecture in fp32 (the speed-up s/s* of export)."""
    import students
    from distill.driver.report import latency_ms

    q, packed = spec.student.quantization, students.schemes_with("packed")
    if q is None or q.scheme not in packed:
        raise SpecError(f"--export: student.quantization.scheme is {q and q.scheme!r}; packed export needs "
                        f"one of {packed}")
    arch = {"name": spec.student.arch, "num_classes": meta.num_classes, "in_chans": meta.channels,
            "variant": spec.student.variant, **spec.student.options}
    path.parent.mkdir(parents=True, exist_ok=True)
    students.save_exported(students.export(student), path, arch=arch)
    deployed = students.load_exported(path)
    x_val, y_val = load_split(root, meta, "val")
    ref, out = logits_of(student, x_val).argmax(1), logits_of(deployed, x_val).argmax(1)
    shape = (meta.channels, meta.image_size, meta.image_size)
    fp32 = students.create_model(**arch).eval()
    packed_ms, fp32_ms = latency_ms(deployed, shape), latency_ms(fp32, shape)
    return {"file": str(path), "file_bytes": path.stat().st_size, "top1": float((out == y_val).float().mean()),
            "agreement_top1": float((out == ref).float().mean()), "latency_ms": packed_ms,
            "fp32_latency_ms": fp32_ms, "speedup_vs_fp32": fp32_ms / packed_ms}


def evaluate_checkpoint(path: Path, config: Path | None = None, overrides: list[str] | None = None,
                        export_to: Path | None = None) -> dict:
    """``distill eval``: the report for a saved student, teachers loaded and run locally; the files
    `distill export` wrote in its run folder, run again in their runtimes, under ``exports``; with
    ``export_to``, also the packed export's (``export_entry``) under ``packed``."""
    spec, root, meta, student, teacher_models, weights = load_student(path, config, overrides)
    report = evaluate_models(spec, root, meta, student, teacher_models)
    report["checkpoint"] = str(weights)
    from distill.commands.deployment import validate_run_exports

    if exports := validate_run_exports(weights.parent, student, root, meta):  # RUN_DIR/export/*, re-run
        report["exports"] = exports
    if export_to is not None:
        report["packed"] = export_entry(spec, root, meta, student, Path(export_to))
    return report


def add_eval_command(sub: Any) -> None:
    """The ``distill eval`` subcommand (registered by ``distill.cli``)."""
    p = sub.add_parser("eval", help="score a trained student against its teachers (no Ray)",
                       description="Evaluate a trained student: accuracy, parameters, stored bytes, MACs, "
                                   "measured CPU latency, compression a/a* and speed-up s/s* against each "
                                   "teacher and the ensemble, on the job's validation split. CHECKPOINT is a "
                                   "run folder (student.pt + config.yaml) or a student.pt.")
    p.add_argument("checkpoint", type=Path, help="run folder or student.pt")
    p.add_argument("--config", type=Path, default=None,
                   help="job spec (default: config.yaml next to the student weights)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set data.source=other/shards (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--out", type=Path, default=None, help="also write the report JSON here")
    p.add_argument("--export", type=Path, default=None, metavar="FILE",
                   help="low-bit students (twn, ttq, binary-connect, xnor): write the packed deployable model "
                        "here and report its accuracy, agreement with the trained model, bytes and latency")


def cmd_eval(args: Any) -> int:
    import json

    from distill.driver.report import print_report, write_report

    report = evaluate_checkpoint(args.checkpoint, args.config, args.overrides, export_to=args.export)
    if args.out:
        write_report(report, args.out)
    if args.json:
        print(json.dumps(report))
        return 0
    print_report(report)
    if "packed" in report:
        p = report["packed"]
        print(f"packed export {p['file']}: {p['file_bytes']:,} bytes, top-1 {p['top1']:.4f}, agreement with the "
              f"trained model {p['agreement_top1']:.4%}, batch-1 latency {p['latency_ms']:.3f} ms "
              f"({p['speedup_vs_fp32']:.2f}x the fp32 {report['student']['name']})")
    return 0
