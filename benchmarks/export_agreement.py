"""Top-1 agreement of a trained low-bit student with its packed export, and the float noise floor.

    python -m benchmarks.export_agreement runs/bench-cifar10/mobilenet_v1_ttq_kd-s0 [--record]

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
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

import students
from distill.evaluate import _logits, locate_checkpoint

RESULTS = Path(__file__).parent / "results" / "export_agreement.jsonl"


def main() -> None:
    from distill.checks import check_job
    from distill.data import load_split
    from distill.runner import prepare_data
    from distill.spec import load_spec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="run folder or student.pt of a twn/ttq/binary-connect/xnor student")
    ap.add_argument("--record", action="store_true", help=f"also append the lines to {RESULTS}")
    args = ap.parse_args()
    weights, config = locate_checkpoint(args.run)
    spec = load_spec(config, [])
    root, meta = prepare_data(spec)
    exact, _ = check_job(spec, meta)
    exact.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    students.simulate_export(exact)  # whatever the spec said: this is the comparison's point
    floating = copy.deepcopy(exact)
    students.simulate_export(floating, exact_eval=False)
    x, y = load_split(root, meta, "val")
    top = {
        "exact": _logits(exact, x).argmax(1),
        "packed": _logits(students.export(exact), x).argmax(1),
        "float32": _logits(floating, x).argmax(1),
        "float64": _logits(floating.double(), x.double()).argmax(1),
    }
    for a, b in (("exact", "packed"), ("float", "packed"), ("float32", "float64")):
        pa, pb = top["float32" if a == "float" else a], top[b]
        line = json.dumps({"bench": "export_agreement", "run": str(args.run), "compare": f"{a}_vs_{b}",
                           "images": len(y), "agreement": round(float((pa == pb).float().mean()), 5),
                           "differ": int((pa != pb).sum()), "top1_a": round(float((pa == y).float().mean()), 4),
                           "top1_b": round(float((pb == y).float().mean()), 4)})  # fmt: skip
        print(line, flush=True)
        if args.record:
            with RESULTS.open("a") as f:
                f.write(line + "\n")

if __name__ == "__main__":
    main()
