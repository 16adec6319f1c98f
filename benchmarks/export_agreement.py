"""Top-1 agreement of a trained low-bit student with its packed export, and the float noise floor.

    python -m benchmarks.export_agreement runs/bench-cifar10/mobilenet_v1_ttq_kd-s0 [--record]
    python -m benchmarks.export_agreement runs/bench-cifar10/mobilenet_v1_ttq_kd-s0 --eval-cost

For a run folder (``config.yaml`` + ``student.pt``, trained with ``simulate_export``) it scores
the validation split four ways and prints one JSON line per comparison:

- ``exact_vs_packed``: the model as it evaluates under ``simulate_export`` (the export's
  arithmetic on the reference ops) against the packed file: the acceptance figure.
- ``float_vs_packed``: the same weights evaluated in float arithmetic (int8 rounding hooks
  only, BN unfolded, float sums), against the packed file: what agreement was before the
  exact eval.
- ``float32_vs_float64``: that float model against itself in float64: the noise floor, how
  often float rounding alone flips a prediction through the int8 steps. No export of a
  float-evaluated model can agree with it more often than its own float64 self does.

``--record`` also appends the lines to ``benchmarks/results/export_agreement.jsonl``, which
``benchmarks.cifar10_report`` turns into the BENCHMARKS.md table.

``--eval-cost`` instead times one validation-sized eval forward (batch 64, one thread; median
of 15 interleaved rounds) three ways: the exact eval as it runs (its export view kept between
forwards), the exact eval with that view rebuilt every forward, and the float eval.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import students
from distill.driver.stages import load_student, logits_of

RESULTS = Path(__file__).parent / "results" / "export_agreement.jsonl"


def agreement(run: Path, exact: nn.Module, floating: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    top = {
        "exact": logits_of(exact, x).argmax(1),
        "packed": logits_of(students.export(exact), x).argmax(1),
        "float": logits_of(floating, x).argmax(1),
        "float64": logits_of(floating.double(), x.double()).argmax(1),
    }
    rows = []
    for compare, a, b in (("exact_vs_packed", "exact", "packed"), ("float_vs_packed", "float", "packed"),
                          ("float32_vs_float64", "float", "float64")):
        pa, pb = top[a], top[b]
        rows.append({"bench": "export_agreement", "run": str(run), "compare": compare,
                     "images": len(y), "agreement": round(float((pa == pb).float().mean()), 5),
                     "differ": int((pa != pb).sum()), "top1_a": round(float((pa == y).float().mean()), 4),
                     "top1_b": round(float((pb == y).float().mean()), 4)})  # fmt: skip
    return rows


def eval_cost(run: Path, exact: nn.Module, floating: nn.Module, x: torch.Tensor, rounds: int = 15) -> dict:
    torch.set_num_threads(1)
    batch = x[:64]

    def forget(model: nn.Module) -> None:
        for m in model.modules():
            m.__dict__.pop("_deployed_cache", None)

    cases = {"exact_ms": lambda: exact(batch), "exact_rebuilt_ms": lambda: (forget(exact), exact(batch)),
             "float_ms": lambda: floating(batch)}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in cases}
    with torch.inference_mode():
        for fn in cases.values():
            fn()  # warm up (and build the exact eval's view)
        for _ in range(rounds):
            for name, fn in cases.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    row = {"bench": "simulate_export_eval_cost", "run": str(run), "batch": len(batch), "threads": 1, "rounds": rounds}
    row.update({k: round(1000 * statistics.median(v), 1) for k, v in times.items()})
    row["rebuilt_vs_kept"] = round(row["exact_rebuilt_ms"] / row["exact_ms"], 2)
    row["exact_vs_float"] = round(row["exact_ms"] / row["float_ms"], 2)
    return row


def main() -> None:
    from distill.data import load_split

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="run folder or student.pt of a twn/ttq/binary-connect/xnor student")
    ap.add_argument("--record", action="store_true", help=f"also append the lines to {RESULTS}")
    ap.add_argument("--eval-cost", action="store_true", help="time the exact eval instead (see above)")
    args = ap.parse_args()
    _spec, root, meta, exact, _teachers, _weights = load_student(args.run)
    students.simulate_export(exact)  # whatever the spec said: this is the comparison's point
    floating = copy.deepcopy(exact)
    students.simulate_export(floating, exact_eval=False)
    x, y = load_split(root, meta, "val")
    exact.eval(), floating.eval()
    rows = [eval_cost(args.run, exact, floating, x)] if args.eval_cost else agreement(args.run, exact, floating, x, y)
    for row in rows:
        line = json.dumps(row)
        print(line, flush=True)
        if args.record:
            with RESULTS.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
