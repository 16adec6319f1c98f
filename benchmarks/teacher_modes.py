"""Student throughput by teacher mode, CIFAR-10, all four modes in one run.

The student (``configs/cifar10/mobilenet_v1_kd.yaml``: MobileNet v1 alpha 0.5, 2 Ray
Train workers under DeepSpeed ZeRO-2, batch 64 each) trains the same number of
steps with its teachers (the shared ensemble: two ResNet-20s and a small VGG)

- ``none``: no teacher, hard labels (the ceiling);
- ``inprocess``: every teacher run inside the training step, the way torchdistill
  and mdistiller do it (``teachers.mode: inprocess``);
- ``online``: Ray-served teacher actors, requests pipelined ``teachers.window`` batches ahead;
- ``offline``: soft labels ``distill teach`` stored once, no teacher running.

Each mode is a real ``distill run`` in its own process; samples/s is read back from the
run's TensorBoard scalar ``train/samples_per_s`` (all workers, loading and waiting
included), median over the logged intervals. Modes are interleaved round by round
(this machine is shared and noisy) and each mode's ratio to ``none`` is the median
over rounds. One JSON line per mode and round, then one summary line per mode; the
summary is also written to ``benchmarks/results/teacher_modes.jsonl`` for the plot.

On one 2-core machine the Ray actors have no cores of their own: they take turns with
the student, so ``online`` cannot beat ``inprocess`` here the way it does when teachers
sit on other machines or GPUs. The numbers say how much each mode costs on this box.

    .venv/bin/python -m benchmarks.teacher_modes               # 60 steps per mode, 2 rounds
    .venv/bin/python -m benchmarks.teacher_modes --quick       # 20 steps, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from benchmarks.jobs import distill_run

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "cifar10" / "mobilenet_v1_kd.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "teacher_modes.jsonl"
MODES = ("none", "inprocess", "online", "offline")


def run_mode(mode: str, steps: int, out: Path, round_: int) -> float:
    """Median samples/s of one short ``distill run`` with ``teachers.mode: mode``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = out / f"tb-{mode}-{round_}"
    sets = {"name": f"modes-{mode}", "teachers.mode": mode, "trainer.epochs": 1,
            "trainer.steps_per_epoch": steps, "logging.log_every_n_steps": 5, "logging.tensorboard": str(tb),
            "output.dir": out / f"{mode}-{round_}"}
    if mode == "none":
        sets["loss.terms"] = '[{type: ce, weight: 1.0}]'
    distill_run(RECIPE, sets, out / f"{mode}-{round_}.log")
    events = sorted(tb.rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[-1].parent), size_guidance={"scalars": 0})
    acc.Reload()
    rates = [e.value for e in acc.Scalars("train/samples_per_s")][1:]  # the first interval warms up
    if not rates:
        raise SystemExit(f"{tb}: no train/samples_per_s logged; raise --steps")
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per mode")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="20 steps, 1 round")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-teacher-modes")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 20, 1
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

    rates: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for mode in MODES:
            rate = run_mode(mode, args.steps, args.out, r)
            rates[mode].append(rate)
            print(json.dumps({"name": "teacher_mode", "mode": mode, "round": r, "steps": args.steps,
                              "samples_per_s": round(rate, 1)}), flush=True)
    summary = []
    for mode in MODES:
        ratio = statistics.median(a / b for a, b in zip(rates[mode], rates["none"], strict=True))
        summary.append({"name": "teacher_mode_summary", "mode": mode, "rounds": args.rounds, "steps": args.steps,
                        "samples_per_s": round(statistics.median(rates[mode]), 1),
                        "ratio_vs_none": round(ratio, 3)})
        print(json.dumps(summary[-1]), flush=True)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("".join(json.dumps(s) + "\n" for s in summary))


if __name__ == "__main__":
    main()
