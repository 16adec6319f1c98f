"""CIFAR-10 model cost: the survey metrics for every recipe's student against the shared ensemble.

For each teacher (loaded from ``../shared/teachers/cifar10``, the way a user brings
them), the ensemble (the sum of its members) and each recipe's student at CIFAR size
(10 classes, 32x32): parameters, mult-adds (torch's FlopCounterMode), bytes at fp32,
int8, 2-bit ternary and 1-bit binary (conv/linear weights at that width plus one fp32
scale each, ``students.cost.model_bytes``), and measured batch-1 CPU latency on one
thread, median of repeats, for

- ``fp32``: the student as trained, in eval mode;
- ``fp32_folded``: through ``students.export`` (BatchNorm folded);
- ``ttq_packed``: the TTQ student of the recipe through ``students.export(format="packed")``
  (2-bit weights on the kernels in ``kernels/``), and its bytes on disk (one file).

``a/a*`` is the ensemble's (or teacher's) parameters over the student's, ``bytes a/a*``
the same in stored bytes, and ``s/s*`` the ensemble's latency over the student's, all
measured in this run. Weights are freshly initialized: cost does not depend on them.
One JSON line per model; also written to ``benchmarks/results/cifar10_cost.jsonl``.

    .venv/bin/python -m benchmarks.cifar10_cost
    .venv/bin/python -m benchmarks.cifar10_cost --quick    # fewer latency repeats
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEACHERS = ROOT.parent / "shared" / "teachers" / "cifar10"
RESULTS = ROOT / "benchmarks" / "results" / "cifar10_cost.jsonl"
STUDENTS = {"mobilenet_v1": {"alpha": 0.5}, "mobilenet_v2": {"width_mult": 0.5}, "shufflenet_v2": {"width": 0.5},
            "squeezenet1_1": {}}
SHAPE = (3, 32, 32)


def teacher_rows(repeats: int) -> list[dict]:
    from distill.driver.report import count_macs, count_params, latency_ms, stored_bytes
    from teachers.load import load_teacher

    rows = []
    for name in ("resnet20_a", "vgg_small_a", "resnet20_b"):
        model = load_teacher(TEACHERS / f"{name}.json", "auto").eval()
        rows.append({"model": name, "kind": "teacher", "params": count_params(model), "macs": count_macs(model, SHAPE),
                     "bytes_fp32": stored_bytes(model), "latency_ms": latency_ms(model, SHAPE, repeats)})
    return rows


def student_row(arch: str, options: dict, repeats: int) -> dict:
    import students
    from distill.driver.report import latency_ms
    from students.cost import count_macs, count_params, model_bytes
    from students.quantize import quantize

    torch.manual_seed(0)
    model = students.create_model(arch, 10, 3, "cifar", **options).eval()
    row = {"model": arch, "kind": "student", "options": options, "params": count_params(model),
           "macs": count_macs(model, SHAPE), **{f"bytes_{b}bit": model_bytes(model, b) for b in (32, 8, 2, 1)}}
    row["latency_ms"] = latency_ms(model, SHAPE, repeats)
    row["latency_ms_folded"] = latency_ms(students.export(model), SHAPE, repeats)
    ttq = quantize(model, "ttq").eval()
    packed = students.export(ttq)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "student.pt"
        students.save_exported(packed, path, arch={"name": arch, "num_classes": 10, "in_chans": 3,
                                                   "variant": "cifar", **options})
        row["ttq_file_bytes"] = path.stat().st_size
    row["latency_ms_ttq_packed"] = latency_ms(packed, SHAPE, repeats)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 latency repeats instead of 50")
    args = parser.parse_args()
    repeats = 10 if args.quick else 50

    teachers = teacher_rows(repeats)
    ensemble = {"model": "ensemble", "kind": "ensemble",
                **{k: sum(t[k] for t in teachers) for k in ("params", "macs", "bytes_fp32", "latency_ms")}}
    rows = [*teachers, ensemble]
    for arch, options in STUDENTS.items():
        s = student_row(arch, options, repeats)
        s["a/a*"] = round(ensemble["params"] / s["params"], 2)
        s["bytes a/a* fp32"] = round(ensemble["bytes_fp32"] / s["bytes_32bit"], 2)
        s["bytes a/a* ttq file"] = round(ensemble["bytes_fp32"] / s["ttq_file_bytes"], 2)
        for key in ("latency_ms", "latency_ms_folded", "latency_ms_ttq_packed"):
            s["s/s*" + key.removeprefix("latency_ms")] = round(ensemble["latency_ms"] / s[key], 2)
        rows.append(s)
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float):
                row[key] = round(value, 3)
        print(json.dumps(row), flush=True)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
