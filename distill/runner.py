"""`distill run`: the whole job, from shards to report.

Order matters for the user: everything that can be checked without training
(spec, data, teacher files and class counts, student construction) is checked
first, so a bad job fails in seconds with one line. Then Ray starts (or is
joined), the teacher replicas load, Ray Train runs the student workers, and
the driver evaluates the saved student against the teachers it served.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from cluster import ray_env
from cluster.train import fit
from distill.checkpoint import atomic_write_text
from distill.checks import check_job
from distill.data import DatasetMeta, ensure_shards, load_split
from distill.report import build_report, model_entry, print_report, write_report
from distill.spec import JobSpec
from distill.worker import train_worker
from teachers.client import TeacherPool
from teachers.ensemble import combine_probs
from teachers.service import TeacherConfig, start_replicas, stop_replicas


def prepare_data(spec: JobSpec) -> tuple[Path, DatasetMeta]:
    """The shard folder and its metadata (packing the source on first use)."""
    source = Path(spec.data.source)
    root = source if (source / "meta.json").is_file() else spec.data.shards
    meta = ensure_shards(spec.data.source, root, shard_size=spec.data.shard_size,
                         val_per_class=spec.data.val_per_class)
    return root, meta


def _versions() -> dict[str, str]:
    import deepspeed
    import lightning
    import ray
    import webdataset

    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
            "ray": ray.__version__, "deepspeed": deepspeed.__version__, "webdataset": webdataset.__version__}


def write_run_folder(spec: JobSpec, run_dir: Path, version: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), run_dir / "config.yaml")
    atomic_write_text(json.dumps({"versions": _versions(), "seed": spec.seed, "run_version": version},
                                 indent=2), run_dir / "run.json")


def start_teachers(spec: JobSpec, meta: DatasetMeta) -> list[list[Any]]:
    handles = []
    for m in spec.teachers.members:
        config = TeacherConfig(name=m.name, source=str(Path(m.source).resolve()), format=m.format, arch=m.arch,
                               arch_options=m.arch_options, hints=m.hints, output=spec.teachers.output,
                               topk=spec.teachers.topk, num_classes=meta.num_classes,
                               input_shape=(meta.channels, meta.image_size, meta.image_size),
                               threads=max(1, int(m.resources.num_cpus)))
        handles.append(start_replicas(config, m.replicas, num_cpus=m.resources.num_cpus,
                                      num_gpus=m.resources.num_gpus, resources=m.resources.custom))
    return handles


def evaluate(spec: JobSpec, root: Path, meta: DatasetMeta, student: torch.nn.Module,
             teacher_models: dict[str, torch.nn.Module], handles: list[list[Any]]) -> dict:
    """Score the student locally and the teachers through the same actors that taught it."""
    x_val, y_val = load_split(root, meta, "val")
    shape = (meta.channels, meta.image_size, meta.image_size)
    student.eval()
    with torch.inference_mode():
        s_logits = torch.cat([student(xb) for xb in x_val.split(512)])
    student_entry = model_entry(spec.student.arch, student, s_logits, y_val, shape)
    teachers, ens = [], None
    if handles:
        pool = TeacherPool([m.name for m in spec.teachers.members], handles)
        outs = [pool(xb) for xb in x_val.split(512)]
        logits = [torch.cat([o.logits[t] for o in outs]) for t in range(len(handles))]
        for m, z in zip(spec.teachers.members, logits, strict=True):
            teachers.append(model_entry(m.name, teacher_models[m.name], z, y_val, shape))
        ens = combine_probs(logits, [m.weight for m in spec.teachers.members], 1.0, spec.teachers.combine)
    return build_report(spec.name, teachers, ens, student_entry, y_val,
                        extra={"val_samples": len(y_val), "dataset": meta.source})


def run_job(spec: JobSpec, *, address: str | None = None, resume: bool = False,
            console: Console | None = None) -> dict:
    console = console or Console()
    started = time.perf_counter()
    root, meta = prepare_data(spec)
    student, teacher_models = check_job(spec, meta)
    run_dir = spec.output.dir
    version = time.strftime("%Y%m%d-%H%M%S")
    write_run_folder(spec, run_dir, version)

    online = spec.teachers.mode == "online" and spec.teachers.members
    needed = spec.cluster.num_workers * spec.cluster.cpus_per_worker + sum(
        m.replicas * m.resources.num_cpus for m in spec.teachers.members) if online else 0
    started_ray = ray_env.connect(address or spec.cluster.address, namespace=spec.cluster.namespace,
                                  num_cpus=needed)
    handles: list[list[Any]] = []
    try:
        if online:
            console.print(f"starting {sum(m.replicas for m in spec.teachers.members)} teacher replica(s)")
            handles = start_teachers(spec, meta)
        config = {"spec": spec.model_dump(mode="json"), "data_root": str(root.resolve()),
                  "teacher_handles": handles, "run_dir": str(run_dir.resolve()),
                  "tensorboard_dir": str(spec.logging.tensorboard.resolve()), "run_version": version,
                  "resume": resume}
        fit(train_worker, config, num_workers=spec.cluster.num_workers, use_gpu=spec.cluster.use_gpu,
            cpus_per_worker=spec.cluster.cpus_per_worker, storage_path=run_dir / "ray", name=spec.name)
        student.load_state_dict(torch.load(run_dir / "student.pt", map_location="cpu", weights_only=True))
        report = evaluate(spec, root, meta, student, teacher_models, handles)
    finally:
        for group in handles:
            stop_replicas(group)
        if started_ray:
            ray_env.shutdown()
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["tensorboard"] = str(spec.logging.tensorboard / spec.name / version)
    write_report(report, run_dir / "report.json")
    print_report(report, console)
    console.print(f"report: {run_dir / 'report.json'}   tensorboard --logdir {spec.logging.tensorboard}")
    return report
