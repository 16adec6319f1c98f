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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from cluster import ray_env
from cluster.placement import bundle_options, release, reserve
from cluster.train import fingerprint, fit
from distill.checkpoint import atomic_write_text, last_checkpoint
from distill.checks import check_job
from distill.data import CorruptCounter, DatasetMeta, ensure_shards, val_loader
from distill.evaluate import evaluate_models
from distill.feature_shapes import resolve_feature_terms, teacher_hint_paths
from distill.report import print_report, write_report
from distill.scheduling import check_cluster, embedded_extras, teacher_demand
from distill.spec import JobSpec
from distill.teach import check_offline
from distill.val_analysis import TeacherValLogits, score_teachers
from distill.worker import train_worker
from teachers.client import TeacherPool
from teachers.service import TeacherConfig, start_replicas, stop_replicas


def prepare_data(spec: JobSpec) -> tuple[Path, DatasetMeta]:
    """The shard folder and its metadata (packing the source on first use)."""
    source = Path(spec.data.source)
    root = source if (source / "meta.json").is_file() else spec.data.shards
    norm = spec.data.normalize
    meta = ensure_shards(spec.data.source, root, shard_size=spec.data.shard_size,
                         val_per_class=spec.data.val_per_class, normalize=norm and (norm.mean, norm.std))
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


def _object_ref(value: Any) -> Any:
    """Large driver-side values reach the workers through the object store, not the config pickle."""
    if value is None:
        return None
    import ray

    return ray.put(value)


def _previous_version(run_dir: Path) -> str | None:
    """The TensorBoard version of the run being resumed, so its curves continue in place."""
    try:
        return json.loads((run_dir / "run.json").read_text()).get("run_version")
    except (OSError, ValueError):
        return None


def teacher_config(spec: JobSpec, meta: DatasetMeta, i: int, hints: list[str]) -> TeacherConfig:
    """What loads and runs member ``i``, in an actor or in a training worker (``mode: inprocess``)."""
    m = spec.teachers.members[i]  # in process, InProcessTeachers keeps the trainer's thread count instead
    return TeacherConfig(name=m.name, source=str(Path(m.source).resolve()), format=m.format, arch=m.arch,
                         arch_options=m.arch_options, hints=hints, output=spec.teachers.output,
                         topk=spec.teachers.topk, num_classes=meta.num_classes,
                         input_shape=(meta.channels, meta.image_size, meta.image_size),
                         threads=max(1, int(m.resources.num_cpus)))


def start_teachers(spec: JobSpec, meta: DatasetMeta, groups: list[Any] | None = None) -> list[list[Any]]:
    """Each teacher's replicas in a placement group of their own (all or none); ``groups`` collects them."""
    handles = []
    hints = teacher_hint_paths(spec)  # each teacher's own hints plus the layers the loss terms read
    for i, m in enumerate(spec.teachers.members):
        pg = reserve(teacher_demand(i, m, spec.cluster.teacher_placement_strategy),
                     spec.cluster.placement_timeout_s)
        if groups is not None:
            groups.append(pg)
        config = teacher_config(spec, meta, i, hints[m.name])
        handles.append(start_replicas(config, m.replicas, num_cpus=m.resources.num_cpus,
                                      num_gpus=m.resources.num_gpus, resources=m.resources.custom,
                                      **bundle_options(pg)))
    return handles


@contextmanager
def served_teachers(spec: JobSpec, meta: DatasetMeta, address: str | None, *, serve: bool, console: Console,
                    before_start: Callable[[], None] | None = None) -> Iterator[list[list[Any]]]:
    """Ray connected (embedded when ``address`` is None, else joined) and, with ``serve``, the spec's
    teacher replicas running; yields their handles. Replicas, placement groups and an embedded Ray
    are torn down on the way out, error and Ctrl-C included: a failed job leaves nothing running."""
    started_ray = ray_env.connect(address, namespace=spec.cluster.namespace,
                                  **(embedded_extras(spec) if address is None else {}))
    handles: list[list[Any]] = []
    groups: list[Any] = []
    try:
        if before_start is not None:
            before_start()
        if serve:
            console.print(f"starting {sum(m.replicas for m in spec.teachers.members)} teacher replica(s)")
            handles.extend(start_teachers(spec, meta, groups))
        yield handles
    finally:
        for group in handles:
            stop_replicas(group)
        for pg in groups:
            release(pg)
        if started_ray:
            ray_env.shutdown()


def evaluate(spec: JobSpec, root: Path, meta: DatasetMeta, student: torch.nn.Module,
             teacher_models: dict[str, torch.nn.Module], handles: list[list[Any]]) -> dict:
    """Score the student locally and the teachers through the same actors that taught it."""
    served = None
    if handles:
        val = score_validation(spec, root, meta, handles, teacher_models)
        served = [torch.from_numpy(z) for z in val.logits] if val else None
    return evaluate_models(spec, root, meta, student, teacher_models, served)


def score_validation(spec: JobSpec, root: Path, meta: DatasetMeta, handles: list[list[Any]],
                     teacher_models: dict[str, torch.nn.Module]) -> TeacherValLogits | None:
    """Every teacher's logits on the validation split, in shard order: through the actors when they
    run (the answers as served), else from the local models; None without teachers."""
    if spec.teachers.mode == "none" or not spec.teachers.members:
        return None
    names = [m.name for m in spec.teachers.members]
    if handles:
        pool = TeacherPool(names, handles)
        infer = lambda x: pool(x).logits
    elif all(n in teacher_models for n in names):
        def infer(x: torch.Tensor) -> list[torch.Tensor]:
            with torch.inference_mode():
                return [teacher_models[n](x) for n in names]
    else:
        return None
    batches = val_loader(root, meta, batch_size=512, counter=CorruptCounter("skip"))
    return score_teachers(batches, infer, names, [m.weight for m in spec.teachers.members],
                          spec.teachers.combine)


def run_job(spec: JobSpec, *, address: str | None = None, resume: bool = False,
            console: Console | None = None, stop_after_steps: int | None = None) -> dict:
    """Train and report. ``stop_after_steps`` ends training early after that many optimizer steps
    (the schedule still spans all epochs); ``resume=True`` then continues from the last epoch-end
    checkpoint, in the same TensorBoard run."""
    console = console or Console()
    started = time.perf_counter()
    root, meta = prepare_data(spec)
    student, teacher_models = check_job(spec, meta)
    soft_labels = check_offline(spec, root, meta) if spec.teachers.mode == "offline" else None
    spec_doc = resolve_feature_terms(spec, student, teacher_models,
                                     (meta.channels, meta.image_size, meta.image_size))
    run_dir = spec.output.dir
    version = (resume and _previous_version(run_dir)) or time.strftime("%Y%m%d-%H%M%S")
    write_run_folder(spec, run_dir, version)

    online = spec.teachers.mode == "online" and bool(spec.teachers.members)
    address = address or spec.cluster.address
    with served_teachers(spec, meta, address, serve=online, console=console,
                         before_start=lambda: check_cluster(spec, root, joined=address is not None)) as handles:
        teacher_val = score_validation(spec, root, meta, handles, teacher_models)
        config = {"spec": spec_doc, "data_root": str(root.resolve()),
                  "teacher_handles": handles, "run_dir": str(run_dir.resolve()),
                  "tensorboard_dir": str(spec.logging.tensorboard.resolve()), "run_version": version,
                  "resume": resume, "stop_after_steps": stop_after_steps,
                  "teacher_val": _object_ref(teacher_val),
                  "soft_labels": str(soft_labels.resolve()) if soft_labels else None,
                  "teacher_configs": [teacher_config(spec, meta, i, hints)
                                      for i, hints in enumerate(teacher_hint_paths(spec).values())]
                  if spec.teachers.mode == "inprocess" else None,
                  "checkpoint_at_start": fingerprint(last_checkpoint(run_dir / "checkpoints"))}
        c = spec.cluster
        fit(train_worker, config, num_workers=c.num_workers, use_gpu=c.use_gpu,
            cpus_per_worker=c.cpus_per_worker, storage_path=run_dir / "ray", name=spec.name,
            max_failures=c.max_failures,
            resources_per_worker=c.worker_resources, label_selector=c.worker_labels,
            placement_strategy=c.placement_strategy, placement_timeout_s=c.placement_timeout_s)
        student.load_state_dict(torch.load(run_dir / "student.pt", map_location="cpu", weights_only=True))
        report = evaluate(spec, root, meta, student, teacher_models, handles)
    if spec.output.export:  # the runtime files, each validated in its runtime (distill.deployment)
        from distill.deployment import export_and_validate

        report["exports"] = export_and_validate(spec, root, meta, student, run_dir, spec.output.export)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["tensorboard"] = str(spec.logging.tensorboard / spec.name / version)
    write_report(report, run_dir / "report.json")
    print_report(report, console)
    console.print(f"report: {run_dir / 'report.json'}   tensorboard --logdir {spec.logging.tensorboard}")
    return report
