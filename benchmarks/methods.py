"""A fair comparison of distillation methods: methods x students x seeds at one budget.

Every run is a real ``distill run`` of a student's CIFAR-10 KD recipe (``configs/cifar10/<student>_kd.yaml``:
its net, lr and budget) with only ``loss.terms`` (and, for hard labels, ``teachers.mode: none``)
replaced by the method's, and ``--set seed=S``. Each method therefore sees the same data, views,
schedule and number of steps. The score is the validation top-1 of the *final* student
(``report.json``, evaluated after the last step): never the best epoch, which would select on the
validation set. Per student and method the summary gives mean and sample std over the seeds, and
the paired (same seed) differences against hard labels and against KD, with their mean, std and
the number of seeds where the method won.

    .venv/bin/python -m benchmarks.methods                                   # every method, 3 students, 5 seeds
    .venv/bin/python -m benchmarks.methods --students squeezenet1_1 --methods hard kd --seeds 0 1 2
    .venv/bin/python -m benchmarks.methods --summary                          # only summarize what is stored
    .venv/bin/python -m benchmarks.methods --summary --write BENCHMARKS.md    # and fill its table + plot
    .venv/bin/python -m benchmarks.methods --list                             # the methods' loss terms

Rows are appended to ``benchmarks/results/methods.jsonl`` (one JSON line per run, also printed) so an
interrupted sweep resumes; a (student, method, seed, budget) already stored is not run again.
``--set key=value`` passes further overrides to every run (e.g. ``trainer.epochs=200`` on a GPU);
they are part of the row's budget, so different budgets never mix in one summary.

The feature methods read the student's ``final`` feature map (every zoo student has one) against
ResNet-20 a's ``layer3``, the hint the offline soft labels of ``base.yaml`` store.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.jobs import distill_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "methods.jsonl"
PLOT = ROOT / "benchmarks" / "results" / "methods.png"
STUDENTS = ("mobilenet_v1", "shufflenet_v2", "squeezenet1_1")
FEAT = {"teacher": "resnet20_a", "student_path": "final", "teacher_path": "layer3"}
PAIR = {"teacher": "resnet20_a", "pairs": [["final", "layer3"]]}
CE = {"type": "ce", "weight": 1.0}
KD = {"type": "kd", "weight": 0.9, "temperature": 4.0}

# Method -> loss terms. Weights are the papers' CIFAR settings where they fit this spec's scale;
# warm-ups are 1 epoch where a paper ramps over 20 of 240 (DKD, ReviewKD).
METHODS: dict[str, list[dict]] = {
    "hard": [CE],
    "kd": [{**CE, "weight": 0.1}, KD],
    "kd_ls": [{**CE, "weight": 0.1}, {**KD, "standardize": True, "temperature": 2.0}],
    "kd_entropy": [{**CE, "weight": 0.1}, {**KD, "combine": "entropy_weighted"}],
    "kd_label": [{**CE, "weight": 0.1}, {**KD, "combine": "label_weighted"}],
    "kd_per_teacher": [{**CE, "weight": 0.1}, {**KD, "per_teacher": True}],
    "dkd": [CE, {"type": "dkd", "weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 1}],
    "dist": [CE, {"type": "dist", "weight": 1.0, "beta": 2.0, "gamma": 2.0, "temperature": 4.0}],
    "mlkd": [CE, {"type": "mlkd", "weight": 1.0}],
    "crd": [CE, {"type": "crd", "weight": 0.8, **FEAT}],
    "rkd": [CE, {"type": "rkd", "weight": 25.0, **PAIR}],
    "pkt": [CE, {"type": "pkt", "weight": 1.0, **PAIR}],
    "sp": [CE, {"type": "sp", "weight": 3000.0, **PAIR}],
    "nst": [CE, {"type": "nst", "weight": 25.0, **PAIR}],
    "reviewkd": [CE, {"type": "reviewkd", "weight": 1.0, "teacher": "resnet20_a", "student_paths": ["final"],
                      "teacher_paths": ["layer3"], "warmup_epochs": 1}],
}


def load_results(path: Path = RESULTS) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_one(student: str, method: str, seed: int, sets: dict[str, str], out: Path) -> dict:
    """One ``distill run`` in a child process; the row for the results file."""
    tag = f"{student}-{method}-s{seed}"
    run_dir = out / tag
    overrides = {"seed": seed, "name": f"methods-{tag}", "output.dir": run_dir,
                 "logging.tensorboard": out / "tensorboard", "loss.terms": json.dumps(METHODS[method]), **sets}
    if method == "hard":
        overrides["teachers.mode"] = "none"
    start = time.perf_counter()
    distill_run(ROOT / "configs" / "cifar10" / f"{student}_kd.yaml", overrides, out / f"{tag}.log")
    s = json.loads((run_dir / "report.json").read_text())["student"]
    return {"student": student, "method": method, "seed": seed, "budget": sets, "val_top1": round(s["top1"], 4),
            "val_top5": round(s["top5"], 4), "wall_s": round(time.perf_counter() - start, 1)}


def _stats(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(rows: list[dict]) -> list[dict]:
    """Per (budget, student, method): mean/std over seeds, paired differences against hard and KD."""
    by: dict[tuple[str, str, str], dict[int, float]] = {}
    for r in rows:
        by.setdefault((json.dumps(r["budget"], sort_keys=True), r["student"], r["method"]), {})[r["seed"]] = r["val_top1"]
    out = []
    for (budget, student, method), seeds in sorted(by.items()):
        mean, std = _stats(list(seeds.values()))
        row = {"summary": f"{student}/{method}", "budget": json.loads(budget), "n": len(seeds),
               "mean_top1": round(mean, 4), "std_top1": None if std is None else round(std, 4)}
        for ref in ("hard", "kd"):
            base = by.get((budget, student, ref), {})
            diffs = [v - base[s] for s, v in seeds.items() if s in base]
            if ref != method and diffs:
                m, sd = _stats(diffs)
                row[f"vs_{ref}"] = {"n": len(diffs), "mean": round(m, 4), "std": None if sd is None else round(sd, 4),
                                    "wins": sum(d > 0 for d in diffs)}
        out.append(row)
    return out


def _fmt(d: dict | None) -> str:
    if not d:
        return "-"
    sd = f" ± {d['std']:.4f}" if d["std"] is not None else ""
    return f"{d['mean']:+.4f}{sd} ({d['wins']}/{d['n']})"


def table(summary: list[dict]) -> str:
    lines = ["| student | method | seeds | val top-1 | vs hard (wins) | vs KD (wins) | budget overrides |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in summary:
        student, method = r["summary"].split("/")
        acc = f"{r['mean_top1']:.4f}" + (f" ± {r['std_top1']:.4f}" if r["std_top1"] is not None else "")
        budget = ", ".join(f"{k}={v}" for k, v in r["budget"].items()) or "recipe"
        lines.append(f"| {student} | {method} | {r['n']} | {acc} | {_fmt(r.get('vs_hard'))} | "
                     f"{_fmt(r.get('vs_kd'))} | {budget} |")
    return "\n".join(lines)


def plot(summary: list[dict], path: Path = PLOT) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    students = sorted({r["summary"].split("/")[0] for r in summary})
    methods = [m for m in METHODS if any(r["summary"].endswith("/" + m) for r in summary)]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(methods) * len(students)), 4.5))
    width = 0.8 / max(1, len(students))
    for j, student in enumerate(students):
        rows = {r["summary"].split("/")[1]: r for r in summary if r["summary"].startswith(student + "/")}
        xs = [i + j * width for i, m in enumerate(methods) if m in rows]
        ys = [rows[m]["mean_top1"] for m in methods if m in rows]
        es = [rows[m]["std_top1"] or 0.0 for m in methods if m in rows]
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=student)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(methods))], methods, rotation=30, ha="right")
    ax.set_ylabel("validation top-1 (final epoch)")
    ax.set_title("distillation methods at one budget: mean ± std over seeds")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--students", nargs="+", default=list(STUDENTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override for every run (part of the budget)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "methods")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--summary", action="store_true", help="only summarize the stored results")
    ap.add_argument("--write", type=Path, help="fill the methods table of this markdown file and draw the plot")
    ap.add_argument("--list", action="store_true", help="print each method's loss terms")
    args = ap.parse_args()
    if args.list:
        for name, terms in METHODS.items():
            print(json.dumps({"method": name, "terms": terms}))
        return
    sets = dict(s.split("=", 1) for s in args.sets)
    for s in args.students:
        if not (ROOT / "configs" / "cifar10" / f"{s}_kd.yaml").is_file():
            raise SystemExit(f"--students: no recipe configs/cifar10/{s}_kd.yaml")
    if not args.summary:
        done = {(r["student"], r["method"], r["seed"], json.dumps(r["budget"], sort_keys=True))
                for r in load_results(args.results)}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        # Seeds outermost: after any prefix of the sweep every method has the same seeds (paired).
        for seed in args.seeds:
            for student in args.students:
                for method in args.methods:
                    if (student, method, seed, json.dumps(sets, sort_keys=True)) in done:
                        continue
                    row = run_one(student, method, seed, sets, args.out)
                    print(json.dumps(row), flush=True)
                    with open(args.results, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
    summary = summarize(load_results(args.results))
    for row in summary:
        print(json.dumps(row))
    if args.write:
        from benchmarks.cifar10_report import fill

        plot(summary)
        fill(args.write, "methods", table(summary))


if __name__ == "__main__":
    main()
