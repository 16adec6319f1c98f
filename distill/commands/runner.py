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

from cluster.train import fingerprint, fit
from distill.data import CorruptCounter, DataError, DatasetMeta, check_shards, val_loader
from distill.driver.checks import check_job
from distill.driver.feature_shapes import resolve_feature_terms, teacher_hint_paths
from distill.driver.report import print_report, write_hparams, write_report
from distill.driver.scheduling import check_cluster
from distill.driver.stages import check_offline, evaluate_models, prepare_data, served_teachers, teacher_config
from distill.errors import RunFailed
from distill.spec import JobSpec
from distill.train.checkpoint import atomic_write_text, last_checkpoint, resumable_checkpoint
from distill.train.val_analysis import TeacherValLogits, score_teachers
from distill.train.worker import STOPPED_FILE, train_worker
from teachers.client import TeacherPool


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


def check_files(spec: JobSpec, root: Path, meta: DatasetMeta, console: Console) -> None:
    """Every shard's tar headers, before Ray starts: a damaged one is named in one line (and, with
    ``data.on_corrupt: skip``, training skips what it cannot read of it)."""
    shards = meta.shard_paths(root, "train") + meta.shard_paths(root, "val")
    for problem in check_shards(shards, spec.data.on_corrupt):
        console.print(f"warning: {problem}; its unreadable samples are skipped (data.on_corrupt: skip)",
                      soft_wrap=True)


def check_resumable(ckpt_dir: Path, console: Console) -> None:
    """Before a ``--resume``: say in one line which damaged checkpoint is passed over for which one;
    refuse (``DataError``) when every checkpoint there is damaged."""
    chosen, damaged = resumable_checkpoint(ckpt_dir)
    if not damaged:
        return
    more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
    if chosen is None:
        raise DataError(f"--resume: {damaged[0]}{more}; no intact checkpoint left in {ckpt_dir} "
                        "(delete the folder to start over)")
    console.print(f"checkpoint damaged, passed over: {damaged[0]}{more}; resuming from {chosen}", soft_wrap=True)


def run_job(spec: JobSpec, *, address: str | None = None, resume: bool = False,
            console: Console | None = None, stop_after_steps: int | None = None) -> dict:
    """Train and report. ``stop_after_steps`` ends training early after that many optimizer steps
    (the schedule still spans all epochs); ``resume=True`` then continues from the last epoch-end
    checkpoint, in the same TensorBoard run."""
    console = console or Console()
    started = time.perf_counter()
    root, meta = prepare_data(spec)
    check_files(spec, root, meta, console)
    student, teacher_models = check_job(spec, meta)
    soft_labels = check_offline(spec, root, meta) if spec.teachers.mode == "offline" else None
    if soft_labels is not None:
        check_shards([str(soft_labels / Path(s).name) for s in meta.shard_paths(root, "train")], "fail",
                     fix="rerun `distill teach`")
    spec_doc = resolve_feature_terms(spec, student, teacher_models,
                                     (meta.channels, meta.image_size, meta.image_size))
    run_dir = spec.output.dir
    if resume:
        check_resumable(run_dir / "checkpoints", console)
    version = (resume and _previous_version(run_dir)) or time.strftime("%Y%m%d-%H%M%S")
    write_run_folder(spec, run_dir, version)

    online = spec.teachers.mode == "online" and bool(spec.teachers.members)
    address = address or spec.cluster.address or ("auto" if online and spec.teachers.service else None)
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
        (run_dir / STOPPED_FILE).unlink(missing_ok=True)
        fit(train_worker, config, num_workers=c.num_workers, use_gpu=c.use_gpu,
            cpus_per_worker=c.cpus_per_worker, storage_path=run_dir / "ray", name=spec.name,
            max_failures=c.max_failures,
            resources_per_worker=c.worker_resources, label_selector=c.worker_labels,
            placement_strategy=c.placement_strategy, placement_timeout_s=c.placement_timeout_s)
        if (run_dir / STOPPED_FILE).is_file():
            kept = last_checkpoint(run_dir / "checkpoints")
            ours = kept is not None and (resume or fingerprint(kept) != config["checkpoint_at_start"])
            raise RunFailed((run_dir / STOPPED_FILE).read_text().strip() + (
                f"; last good checkpoint: {kept}" if ours else "; no checkpoint was written before it"))
        student.load_state_dict(torch.load(run_dir / "student.pt", map_location="cpu", weights_only=True))
        report = evaluate(spec, root, meta, student, teacher_models, handles)
    if spec.output.export:  # the runtime files, each validated in its runtime (distill.commands.deployment)
        from distill.commands.deployment import export_and_validate

        report["exports"] = export_and_validate(spec, root, meta, student, run_dir, spec.output.export)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["tensorboard"] = str(spec.logging.tensorboard / spec.name / version)
    write_report(report, run_dir / "report.json")
    write_hparams(report, spec.model_dump(mode="json"), spec.logging.tensorboard / spec.name / version)
    print_report(report, console)
    console.print(f"report: {run_dir / 'report.json'}   tensorboard --logdir {spec.logging.tensorboard}")
    return report
