"""CIFAR-10 accuracy table: every recipe in ``configs/cifar10/`` through the real path, same budget.

Each run is ``distill run <recipe> --set seed=S`` in its own process (Ray, Ray Train
with 2 workers, DeepSpeed ZeRO-2; KD recipes read the ensemble's soft labels that
``distill teach`` stored once). Its ``report.json`` gives the validation top-1 on the
5,000 images the teachers never saw, and the student's parameters, mult-adds, bytes
and latency. Results are appended to ``benchmarks/results/cifar10_accuracy.jsonl``,
one JSON line per run (also printed), so an interrupted sweep resumes where it
stopped; ``--summary`` prints mean and sample std per recipe, and the paired (same
seed) KD - hard differences. Tables and plots come from ``benchmarks.cifar10_report``.

    .venv/bin/distill teach configs/cifar10/base.yaml          # once: soft labels + hints
    .venv/bin/python -m benchmarks.cifar10_accuracy              # the full table (~15 runs)
    .venv/bin/python -m benchmarks.cifar10_accuracy --summary    # only summarize what is stored
    .venv/bin/python -m benchmarks.cifar10_accuracy --quick      # smoke form: 2 recipes, 20 steps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.jobs import distill_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cifar10_accuracy.jsonl"

# (recipe, seeds): the minimum table, MobileNet v1 (alpha 0.5) as the 3-seed student.
PLAN: list[tuple[str, tuple[int, ...]]] = [
    *((r, (0, 1, 2)) for r in ("mobilenet_v1_hard", "mobilenet_v1_kd", "mobilenet_v1_kd_hints")),
    *((r, (0,)) for r in ("mobilenet_v1_ttq_hard", "mobilenet_v1_ttq_kd", "shufflenet_v2_hard",
                          "shufflenet_v2_kd", "squeezenet1_1_hard", "squeezenet1_1_kd")),
]


def load_results(path: Path = RESULTS) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_recipe(recipe: str, seed: int, out: Path, extra: dict) -> dict:
    """One ``distill run`` in a child process; the row for the results file."""
    run_dir = out / f"{recipe}-s{seed}"
    start = time.perf_counter()
    distill_run(ROOT / "configs" / "cifar10" / f"{recipe}.yaml",
                {"seed": seed, "name": f"cifar10-{recipe}-s{seed}", "output.dir": run_dir,
                 "logging.tensorboard": out / "tensorboard", **extra}, out / f"{recipe}-s{seed}.log")
    report = json.loads((run_dir / "report.json").read_text())
    s = report["student"]
    return {"recipe": recipe, "seed": seed, "val_top1": round(s["top1"], 4), "val_top5": round(s["top5"], 4),
            "params": s["params"], "macs": s["macs"], "bytes": s["bytes"], "latency_ms": round(s["latency_ms"], 3),
            "ensemble_top1": report.get("ensemble_top1"), "wall_s": round(time.perf_counter() - start, 1)}


def summarize(rows: list[dict]) -> list[dict]:
    by: dict[str, dict[int, float]] = {}
    for r in rows:
        by.setdefault(r["recipe"], {})[r["seed"]] = r["val_top1"]
    out = []
    for recipe, seeds in by.items():
        values = list(seeds.values())
        out.append({"summary": recipe, "n": len(values), "mean_top1": round(statistics.mean(values), 4),
                    "std_top1": round(statistics.stdev(values), 4) if len(values) > 1 else None})
    for recipe in by:
        if recipe.endswith("_hard"):
            stem = recipe.removesuffix("_hard")
            for other in (f"{stem}_kd", f"{stem}_kd_hints"):
                paired = [by[other][s] - v for s, v in by[recipe].items() if s in by.get(other, {})]
                if paired:
                    out.append({"summary": f"{other} - {recipe}", "n": len(paired),
                                "mean": round(statistics.mean(paired), 4), "wins": sum(d > 0 for d in paired)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", help="only these recipes (default: the plan)")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the plan's seeds")
    parser.add_argument("--summary", action="store_true", help="only summarize stored results")
    parser.add_argument("--quick", action="store_true", help="smoke form: hard and KD, 20 steps of 1 epoch")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-cifar10")
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

    results, extra = RESULTS, {}
    plan = [(r, s) for r, s in PLAN if not args.recipes or r in args.recipes]
    if args.quick:  # a smoke test of the whole path; its numbers are not the table's
        results = args.out / "quick.jsonl"
        results.unlink(missing_ok=True)
        plan = [("mobilenet_v1_hard", (0,)), ("mobilenet_v1_kd", (0,))]
        extra = {"trainer.epochs": 1, "trainer.steps_per_epoch": 20}
    if not args.summary:
        done = {(r["recipe"], r["seed"]) for r in load_results(results)}
        results.parent.mkdir(parents=True, exist_ok=True)
        for recipe, seeds in plan:
            for seed in args.seeds or seeds:
                if (recipe, seed) in done:
                    continue
                row = run_recipe(recipe, seed, args.out, extra)
                print(json.dumps(row), flush=True)
                with open(results, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
    for line in summarize(load_results(results)):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
