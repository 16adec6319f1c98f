"""The CIFAR-10 tables and plots for BENCHMARKS.md, made from the stored results (no training here).

Prints the markdown tables (accuracy by recipe, model cost, throughput by teacher mode, packed
export agreement) and writes:

- ``benchmarks/results/cifar10_accuracy_vs_macs.png``: validation top-1 against mult-adds,
  one marker per student and precision, one colour per method (hard / KD / KD + hints),
  mean over seeds with the sample std as an error bar; the teachers and their ensemble
  (from ``cifar10_cost.jsonl`` and the runs' reports) for reference.
- ``benchmarks/results/cifar10_teacher_modes.png``: student samples/s by teacher mode.

    .venv/bin/python -m benchmarks.cifar10_report                         # print the tables
    .venv/bin/python -m benchmarks.cifar10_report --write BENCHMARKS.md   # and fill its markers
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.cifar10_accuracy import RESULTS as ACCURACY  # noqa: E402
from benchmarks.cifar10_accuracy import load_results  # noqa: E402
from benchmarks.cifar10_cost import RESULTS as COST  # noqa: E402
from benchmarks.export_agreement import RESULTS as AGREEMENT  # noqa: E402
from benchmarks.teacher_modes import RESULTS as MODES  # noqa: E402

OUT = ACCURACY.parent
TEACHER_TOP1 = {"resnet20_a": 0.8548, "vgg_small_a": 0.8580, "resnet20_b": 0.8572}  # shared README, same split
COLORS = {"hard": "tab:gray", "kd": "tab:blue", "kd_hints": "tab:green"}


def _method(recipe: str) -> tuple[str, str]:
    """'mobilenet_v1_ttq_kd_hints' -> ('mobilenet_v1_ttq', 'kd_hints')."""
    for method in ("kd_hints", "hard", "kd"):
        if recipe.endswith("_" + method):
            return recipe.removesuffix("_" + method), method
    raise ValueError(recipe)


def accuracy_plot(path: Path) -> None:
    rows = load_results(ACCURACY)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["recipe"], []).append(r)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for recipe, runs in sorted(groups.items()):
        student, method = _method(recipe)
        accs = [r["val_top1"] for r in runs]
        macs = runs[0]["macs"] / 1e6
        err = statistics.stdev(accs) if len(accs) > 1 else 0.0
        marker = "s" if "_ttq" in student else "o"
        ax.errorbar(macs, statistics.mean(accs), yerr=err, fmt=marker, color=COLORS[method], capsize=3,
                    label=method if method not in ax.get_legend_handles_labels()[1] else None)
        ax.annotate(student.replace("_ttq", " TTQ"), (macs, statistics.mean(accs)), fontsize=7,
                    xytext=(4, -10 if method == "hard" else 4), textcoords="offset points")
    if COST.is_file():
        cost = {c["model"]: c for c in map(json.loads, COST.read_text().splitlines())}
        for name, top1 in TEACHER_TOP1.items():
            ax.plot(cost[name]["macs"] / 1e6, top1, "^", color="tab:red",
                    label="teachers" if name == "resnet20_a" else None)
        ens = [r["ensemble_top1"] for r in rows if r.get("ensemble_top1")]
        if ens:
            ax.plot(cost["ensemble"]["macs"] / 1e6, ens[0], "*", ms=12, color="tab:red", label="ensemble")
    ax.set_xscale("log")
    ax.set_xlabel("mult-adds per image (M, log scale)")
    ax.set_ylabel("validation top-1 (5,000 held-out images)")
    ax.set_title("CIFAR-10 students, same budget (squares: TTQ ternary)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def modes_plot(path: Path) -> None:
    rows = [json.loads(line) for line in MODES.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar([r["mode"] for r in rows], [r["samples_per_s"] for r in rows],
                  color=["tab:gray", "tab:orange", "tab:blue", "tab:green"][: len(rows)])
    for bar, r in zip(bars, rows, strict=True):
        ax.annotate(f"{r['samples_per_s']:.0f}/s\n{r['ratio_vs_none']:.2f}x", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("student samples/s (2 workers)")
    ax.set_title("Throughput by teacher mode (MobileNet v1 0.5, 3 teachers, 2 CPU cores)")
    ax.set_ylim(0, max(r["samples_per_s"] for r in rows) * 1.25)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pm(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{mean:.4f}"


def accuracy_table() -> str:
    rows = load_results(ACCURACY)
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["recipe"], []).append(r)
    lines = ["| student | precision | hard labels | KD | KD + hints | seeds | params | MACs |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    students = dict.fromkeys(_method(r)[0] for r in by)
    for student in students:
        cells = []
        for method in ("hard", "kd", "kd_hints"):
            runs = by.get(f"{student}_{method}", [])
            cells.append(_pm([r["val_top1"] for r in runs]) if runs else "-")
        any_run = next(r for m in ("hard", "kd", "kd_hints") for r in by.get(f"{student}_{m}", []))
        seeds = max(len(by.get(f"{student}_{m}", [])) for m in ("hard", "kd", "kd_hints"))
        name, precision = (student.removesuffix("_ttq"), "TTQ 2-bit") if student.endswith("_ttq") else (student, "fp32")
        lines.append(f"| {name} | {precision} | {' | '.join(cells)} | {seeds} | {any_run['params'] / 1e3:.0f}k | "
                     f"{any_run['macs'] / 1e6:.1f}M |")
    return "\n".join(lines)


def cost_table() -> str:
    rows = [json.loads(line) for line in COST.read_text().splitlines() if line.strip()]
    lines = ["| model | params | MACs | fp32 | int8 | 2-bit | 1-bit | TTQ packed file | latency ms fp32 / folded / "
             "packed | a/a* | s/s* fp32 / folded / packed |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    kib = lambda b: f"{b / 1024:.0f} KiB"  # noqa: E731
    for r in rows:
        if r["kind"] != "student":
            lines.append(f"| {r['model']} | {r['params'] / 1e3:.0f}k | {r['macs'] / 1e6:.1f}M | {kib(r['bytes_fp32'])} "
                         f"| | | | | {r['latency_ms']:.2f} | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['params'] / 1e3:.0f}k | {r['macs'] / 1e6:.1f}M | {kib(r['bytes_32bit'])} | "
            f"{kib(r['bytes_8bit'])} | {kib(r['bytes_2bit'])} | {kib(r['bytes_1bit'])} | {kib(r['ttq_file_bytes'])} | "
            f"{r['latency_ms']:.2f} / {r['latency_ms_folded']:.2f} / {r['latency_ms_ttq_packed']:.2f} | {r['a/a*']:.2f} | "
            f"{r['s/s*']:.2f} / {r['s/s*_folded']:.2f} / {r['s/s*_ttq_packed']:.2f} |")
    return "\n".join(lines)


def modes_table() -> str:
    rows = [json.loads(line) for line in MODES.read_text().splitlines() if line.strip()]
    lines = ["| teacher mode | samples/s | vs no teacher |", "|---|---:|---:|"]
    lines += [f"| {r['mode']} | {r['samples_per_s']:.0f} | {r['ratio_vs_none']:.3f} |" for r in rows]
    return "\n".join(lines)


def agreement_table() -> str:
    rows = [json.loads(line) for line in AGREEMENT.read_text().splitlines() if line.strip()]
    lines = ["| run | comparison | agreement | images that differ | top-1 (first / second) |", "|---|---|---:|---:|---:|"]
    lines += [f"| {Path(r['run']).name} | {r['compare'].replace('_vs_', ' vs ')} | {r['agreement']:.2%} | "
              f"{r['differ']} | {r['top1_a']:.4f} / {r['top1_b']:.4f} |" for r in rows]
    return "\n".join(lines)


def fill(doc: Path, name: str, table: str) -> None:
    """Replace what lies between ``<!-- cifar10:NAME -->`` and ``<!-- /cifar10:NAME -->`` in ``doc``."""
    text = doc.read_text()
    start, end = f"<!-- cifar10:{name} -->", f"<!-- /cifar10:{name} -->"
    if start not in text or end not in text:
        raise SystemExit(f"{doc}: no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    doc.write_text(f"{head}{start}\n{table}\n{end}{rest.split(end, 1)[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="also put the tables into this file's cifar10 markers")
    args = parser.parse_args()
    for name, path, table in (("accuracy", ACCURACY, accuracy_table), ("cost", COST, cost_table),
                              ("modes", MODES, modes_table), ("agreement", AGREEMENT, agreement_table)):
        if path.is_file():
            print(table() + "\n")
            if args.write:
                fill(args.write, name, table())
    if ACCURACY.is_file():
        accuracy_plot(OUT / "cifar10_accuracy_vs_macs.png")
        print(OUT / "cifar10_accuracy_vs_macs.png")
    if MODES.is_file():
        modes_plot(OUT / "cifar10_teacher_modes.png")
        print(OUT / "cifar10_teacher_modes.png")


if __name__ == "__main__":
    main()
