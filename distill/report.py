"""The end-of-run report: accuracy, size, cost and speed of teachers and student.

Survey metrics (Cheng et al.): compression rate a/a* = teacher parameters over
student parameters, and speed-up s/s* = teacher latency over student latency,
both against each teacher and the whole ensemble (whose cost is the sum of its
members'). Latency is measured here, batch 1 on this CPU, median of repeats.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from distill.checkpoint import atomic_write_text


def count_params(model: nn.Module) -> int:
    params = list(model.parameters())
    if params:
        return sum(p.numel() for p in params)
    # TorchScript / exported modules may hold weights as buffers or constants.
    return sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """Mult-adds of one sample via ``FlopCounterMode`` (FLOPs / 2); None if not countable."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(torch.zeros(1, *input_shape))
        return counter.get_total_flops() // 2
    except Exception:  # noqa: BLE001 - some compiled formats cannot be traced by the counter
        return None


def latency_ms(model: nn.Module, input_shape: tuple[int, ...], repeats: int = 30) -> float:
    x = torch.zeros(1, *input_shape)
    times = []
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def top1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return (logits.argmax(1) == targets).float().mean().item()


def model_entry(name: str, model: nn.Module, logits: torch.Tensor, targets: torch.Tensor,
                input_shape: tuple[int, ...]) -> dict[str, Any]:
    model.eval()
    return {"name": name, "top1": top1(logits, targets), "params": count_params(model),
            "macs": count_macs(model, input_shape), "latency_ms": latency_ms(model, input_shape)}


def build_report(job: str, teachers: list[dict[str, Any]], ensemble_logits: torch.Tensor | None,
                 student: dict[str, Any], targets: torch.Tensor, extra: dict[str, Any] | None = None) -> dict:
    report: dict[str, Any] = {"job": job, "teachers": teachers, "student": student}
    if teachers:
        ens_params = sum(t["params"] for t in teachers)
        ens_latency = sum(t["latency_ms"] for t in teachers)
        report["ensemble_top1"] = top1(ensemble_logits, targets) if ensemble_logits is not None else None
        report["ensemble"] = {"params": ens_params, "latency_ms": ens_latency,
                              "macs": sum(t["macs"] or 0 for t in teachers)}
        for entry in [*teachers, report["ensemble"]]:
            entry["compression_rate"] = entry["params"] / student["params"]
            entry["speedup"] = entry["latency_ms"] / student["latency_ms"]
    report.update(extra or {})
    return report


def write_report(report: dict, path: Path) -> None:
    atomic_write_text(json.dumps(report, indent=2), path)


def _fmt_int(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def print_report(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"distill report: {report['job']}")
    for col in ("model", "top-1", "params", "MACs", "latency ms", "a/a*", "s/s*"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for t in report["teachers"]:
        table.add_row(f"teacher {t['name']}", f"{t['top1']:.4f}", _fmt_int(t["params"]), _fmt_int(t["macs"]),
                      f"{t['latency_ms']:.3f}", f"{t['compression_rate']:.2f}", f"{t['speedup']:.2f}")
    if report["teachers"]:
        e = report["ensemble"]
        acc = report.get("ensemble_top1")
        table.add_row("ensemble", f"{acc:.4f}" if acc is not None else "-", _fmt_int(e["params"]),
                      _fmt_int(e["macs"]), f"{e['latency_ms']:.3f}", f"{e['compression_rate']:.2f}",
                      f"{e['speedup']:.2f}")
    s = report["student"]
    table.add_row(f"student {s['name']}", f"{s['top1']:.4f}", _fmt_int(s["params"]), _fmt_int(s["macs"]),
                  f"{s['latency_ms']:.3f}", "1.00", "1.00", style="bold")
    console.print(table)
