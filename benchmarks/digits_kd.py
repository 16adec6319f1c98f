"""Does distillation pay on scikit-learn digits? KD from the demo ensemble vs. hard labels.

Every run trains the demo student (MobileNet v1, alpha 0.25) with the same
budget (epochs, steps per epoch, batch, optimizer, schedule) through the
real path (`distill.commands.runner.run_job`: Ray teachers, Ray Train, DeepSpeed):

- ``hard``: cross-entropy on the labels alone, no teachers;
- ``kd``: 0.3 CE + 0.7 Hinton KD (T = 4) to the demo ensemble (the demo's loss);
- ``fitnets``: a FitNets hint stage (student ``stages.2`` regresses the CNN
  teacher's ``stages.1`` through a learned 1x1 conv) for the first quarter of
  the epochs, then the KD loss;
- ``dkd``: CE + decoupled KD (alpha 1, beta 8, T = 4) to the ensemble, its
  weight ramped up linearly over the first third of the epochs. (The paper
  warms up over 20 epochs; with no warm-up, beta 8 x T^2 makes the first steps
  about 15 times larger than KD's and the student collapses at lr 0.1.)

Seeds change the student's initialization and the data order. Prints one JSON
line per run, then one per method with the mean and sample std of the final
validation top-1 over seeds, and the paired (same seed) difference KD - hard.

    .venv/bin/python -m benchmarks.digits_kd                       # 3 seeds x 4 methods
    .venv/bin/python -m benchmarks.digits_kd --methods hard kd --seeds 0 1 2 --epochs 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
KD = [{"type": "ce", "weight": 0.3}, {"type": "kd", "weight": 0.7, "temperature": 4.0}]


def method_terms(method: str, epochs: int) -> list[dict]:
    if method == "hard":
        return [{"type": "ce", "weight": 1.0}]
    if method == "kd":
        return [dict(t) for t in KD]
    if method == "fitnets":
        stage = max(1, epochs // 4)
        hint = {"type": "hint", "weight": 1.0, "student_path": "stages.2", "teacher": "cnn",
                "teacher_path": "stages.1", "stage_epochs": stage}
        return [hint, *({**t, "start_epoch": stage} for t in KD)]
    if method == "dkd":
        return [{"type": "ce", "weight": 1.0},
                {"type": "dkd", "weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0,
                 "warmup_epochs": max(1, epochs // 3)}]
    raise ValueError(f"unknown method {method!r}")


def job_doc(method: str, seed: int, epochs: int, out: Path) -> dict:
    doc = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    doc["name"] = f"digits-{method}-s{seed}"
    doc["seed"] = seed
    doc["trainer"]["epochs"] = epochs
    doc["loss"]["terms"] = method_terms(method, epochs)
    if method == "hard":
        doc["teachers"]["mode"] = "none"
    doc["logging"]["tensorboard"] = str(out / "tensorboard")
    doc["output"]["dir"] = str(out / f"{method}-s{seed}")
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["hard", "kd", "fitnets", "dkd"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-digits-kd")
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.chdir(ROOT)  # the demo spec's relative paths (shards, teacher files)

    from rich.console import Console

    from distill.commands.runner import prepare_data, run_job
    from distill.commands.teacher_training import train_teachers
    from distill.spec import parse_spec

    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the script
    base = parse_spec(job_doc("kd", 0, args.epochs, args.out))
    root, meta = prepare_data(base)
    train_teachers(base, root, meta)  # once; cached under data_cache/teachers

    results: dict[str, dict[int, float]] = {}
    # Seed-major order interleaves the methods, so machine load drifts over all of them alike.
    for seed in args.seeds:
        for method in args.methods:
            spec = parse_spec(job_doc(method, seed, args.epochs, args.out))
            start = time.perf_counter()
            report = run_job(spec, console=quiet)
            top1 = report["student"]["top1"]
            results.setdefault(method, {})[seed] = top1
            print(json.dumps({"run": method, "seed": seed, "epochs": args.epochs, "val_top1": round(top1, 4),
                              "ensemble_top1": report.get("ensemble_top1"),
                              "wall_s": round(time.perf_counter() - start, 1)}), flush=True)

    for method, by_seed in results.items():
        values = list(by_seed.values())
        print(json.dumps({"summary": method, "n": len(values), "mean_top1": round(statistics.mean(values), 4),
                          "std_top1": round(statistics.stdev(values), 4) if len(values) > 1 else None}),
              flush=True)
    if "hard" in results and "kd" in results:
        paired = [results["kd"][s] - results["hard"][s] for s in results["kd"] if s in results["hard"]]
        print(json.dumps({"summary": "kd_minus_hard", "n": len(paired),
                          "mean": round(statistics.mean(paired), 4),
                          "std": round(statistics.stdev(paired), 4) if len(paired) > 1 else None,
                          "kd_wins": sum(d > 0 for d in paired)}), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
