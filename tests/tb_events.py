"""Reading TensorBoard event files back in tests (real files, read with TensorBoard's own reader)."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def load_events(logdir: Path) -> EventAccumulator:
    files = sorted(Path(logdir).rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {logdir}"
    acc = EventAccumulator(str(files[-1].parent), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    return acc


def scalar_values(acc: EventAccumulator, tag: str) -> list[float]:
    return [e.value for e in acc.Scalars(tag)]
