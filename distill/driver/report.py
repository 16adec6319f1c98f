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
from rich.measure import Measurement
from rich.table import Table
from torch import nn


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
    """Median batch-1 latency on one CPU thread: the phone-style figure, and the only one that is
    stable on a shared machine (with several threads, a busy core stalls every op's thread pool)."""
    x = torch.zeros(1, *input_shape)
    times = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(5):
                model(x)
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return 1000 * statistics.median(times)


def top1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return (logits.argmax(1) == targets).float().mean().item()


def stored_bytes(model: nn.Module) -> int:
    """Bytes to store the weights as deployed: a low-bit layer's weight at its bit width plus the
    scales its packed form keeps (``export_state``), everything else at its own dtype. BatchNorm
    running statistics are left out: they fold into the preceding conv on export."""
    from students.qlayers import QConv2d, QLinear

    bits = 0
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, QConv2d | QLinear):
            state = module.export_state()
            bits += state["codes"].numel() * module.weight_bits
            scales = [v for k, v in state.items() if k != "codes" and isinstance(v, torch.Tensor)]
            bits += sum(32 * v.numel() for v in scales)
            seen.update(id(p) for p in module.parameters(recurse=False) if p is not module.bias)
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                bits += p.numel() * p.element_size() * 8
    if not seen:  # TorchScript / exported teachers may hold weights as buffers or constants
        tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        bits = sum(t.numel() * t.element_size() * 8 for t in tensors)
    return (bits + 7) // 8


def model_entry(name: str, model: nn.Module, logits: torch.Tensor, targets: torch.Tensor,
                input_shape: tuple[int, ...]) -> dict[str, Any]:
    from students.simulate import unsimulated

    model.eval()
    k = min(5, logits.shape[1])
    top5 = (logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1).float().mean().item()
    costed = unsimulated(model)  # a simulate_export student's cost as trained, not its eval emulation's
    return {"name": name, "top1": top1(logits, targets), "top5": top5, "params": count_params(model),
            "bytes": stored_bytes(model), "macs": count_macs(costed, input_shape),
            "latency_ms": latency_ms(costed, input_shape)}


def build_report(job: str, teachers: list[dict[str, Any]], ensemble_logits: torch.Tensor | None,
                 student: dict[str, Any], targets: torch.Tensor, extra: dict[str, Any] | None = None) -> dict:
    report: dict[str, Any] = {"job": job, "teachers": teachers, "student": student}
    if teachers:
        ens_params = sum(t["params"] for t in teachers)
        ens_latency = sum(t["latency_ms"] for t in teachers)
        report["ensemble_top1"] = top1(ensemble_logits, targets) if ensemble_logits is not None else None
        report["ensemble"] = {"params": ens_params, "latency_ms": ens_latency,
                              "macs": sum(t["macs"] or 0 for t in teachers),
                              "bytes": sum(t.get("bytes", 0) for t in teachers)}
        for entry in [*teachers, report["ensemble"]]:
            entry["compression_rate"] = entry["params"] / student["params"]
            if entry.get("bytes") and student.get("bytes"):
                entry["bytes_ratio"] = entry["bytes"] / student["bytes"]  # a/a* in storage, low-bit aware
            entry["speedup"] = entry["latency_ms"] / student["latency_ms"]
    report.update(extra or {})
    return report


def write_report(report: dict, path: Path) -> None:
    from distill.train.checkpoint import atomic_write_text  # imports Lightning: not at `distill --help` time

    atomic_write_text(json.dumps(report, indent=2), path)


def _fmt_int(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _fmt_bytes(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def print_report(report: dict, console: Console | None = None) -> None:
    console = console or Console(width=max(Console().width, 100))
    table = Table(title=f"distill report: {report['job']}")
    for col in ("model", "top-1", "params", "bytes", "MACs", "latency ms", "a/a*", "s/s*"):
        table.add_column(col, justify="right" if col != "model" else "left", no_wrap=True)
    for t in report["teachers"]:
        table.add_row(f"teacher {t['name']}", f"{t['top1']:.4f}", _fmt_int(t["params"]),
                      _fmt_bytes(t.get("bytes")), _fmt_int(t["macs"]), f"{t['latency_ms']:.3f}",
                      f"{t['compression_rate']:.2f}", f"{t['speedup']:.2f}")
    if report["teachers"]:
        e = report["ensemble"]
        acc = report.get("ensemble_top1")
        table.add_row("ensemble", f"{acc:.4f}" if acc is not None else "-", _fmt_int(e["params"]),
                      _fmt_bytes(e.get("bytes")), _fmt_int(e["macs"]), f"{e['latency_ms']:.3f}",
                      f"{e['compression_rate']:.2f}", f"{e['speedup']:.2f}")
    s = report["student"]
    table.add_row(f"student {s['name']}", f"{s['top1']:.4f}", _fmt_int(s["params"]),
                  _fmt_bytes(s.get("bytes")), _fmt_int(s["macs"]), f"{s['latency_ms']:.3f}", "1.00", "1.00",
                  style="bold")
    # Whole numbers at any width: a CI log or `| tee` gets an 80-column console, which would cut cells
    # to "0.96…"; the table is printed at its natural width instead (a terminal narrower wraps lines).
    natural = Measurement.get(console, console.options.update(max_width=10_000), table).maximum
    width = console.width
    console.width = max(width, natural)
    try:
        console.print(table, crop=False)
    finally:
        console.width = width
    if report.get("exports"):

        for entry in report["exports"]:
            console.print(export_summary_line(entry), highlight=False, soft_wrap=True)


def hparams_of(spec: dict[str, Any]) -> dict[str, str | float | int | bool]:
    """The spec as flat ``section.field`` hyperparameters for TensorBoard's HParams tab (paths, logging and
    output left out; teachers and loss terms as short strings so runs of a sweep line up)."""
    out: dict[str, str | float | int | bool] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif isinstance(value, bool | int | float | str):
            out[prefix] = value
        elif value is not None:
            out[prefix] = json.dumps(value, separators=(",", ":"))

    for section in ("student", "trainer", "data", "cluster"):
        walk(section, spec.get(section) or {})
    teachers = dict(spec.get("teachers") or {})
    members = teachers.pop("members", [])
    teachers.pop("offline_dir", None)
    walk("teachers", teachers)
    out["teachers.members"] = ",".join(m["name"] for m in members)
    out["loss.terms"] = ",".join(f"{t['type']}:{t['weight']:g}" for t in (spec.get("loss") or {}).get("terms", []))
    out["seed"] = spec.get("seed", 0)
    return {k: v for k, v in out.items() if k.startswith(_HPARAM_KEEP) or not k.startswith(_HPARAM_DROP)}


# Where a run ran and how its data was split into files are not what a sweep compares; they would only
# push the columns that matter off the HParams table.
_HPARAM_KEEP = ("cluster.num_workers", "data.augment", "data.normalize")
_HPARAM_DROP = ("cluster.", "data.")


def write_hparams(report: dict, spec: dict[str, Any], run_dir: Path) -> None:
    """HParams for this run, in its own TensorBoard folder: spec fields against the final validation
    top-1 (student and ensemble), parameters, MACs and bytes, so the HParams tab compares a sweep."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    s = report["student"]
    metrics = {"hparams/student_top1": s["top1"], "hparams/params": s["params"], "hparams/macs": s["macs"] or 0,
               "hparams/bytes": s.get("bytes") or 0}
    if report.get("ensemble_top1") is not None:
        metrics["hparams/ensemble_top1"] = report["ensemble_top1"]
    writer = SummaryWriter(log_dir=str(run_dir))
    try:
        for summary in hparams(hparams_of(spec), metrics):
            writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value)
    finally:
        writer.close()


def export_summary_line(e: dict[str, Any]) -> str:
    """One line per exported file, beside the trained student's numbers."""
    lat = ", ".join(f"{ms:.3f} ms @{t}t ({e['speedup_vs_eager'][t]:.2f}x eager)" for t, ms in e["latency_ms"].items())
    deleg = e.get("delegation")
    outside = f"; not in XNNPACK: {', '.join(deleg['undelegated_compute'])}" if deleg and deleg[
        "undelegated_compute"] else ""
    return (f"{e['file']} [{e['runtime']}, {e['form']}]: {e['bytes']:,} bytes, top-1 {e['top1']:.4f} "
            f"(student {e['student_top1']:.4f}), agreement {e['agreement_top1']:.2%}, batch-1 {lat}{outside}")
