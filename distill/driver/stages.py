"""The stages the job commands share: the job's data, its served teachers, its offline soft
labels checked, its models scored.

``distill run`` (runner), ``distill teach`` (teach) and ``distill eval`` (evaluate) each
compose these; none of the three imports another, so the commands sit side by side on top
of this module and the imports point one way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from cluster import ray_env
from cluster.placement import ClusterError, bundle_options, release, reserve
from distill.data import DatasetMeta, ensure_shards, load_split
from distill.data.meta import DataError
from distill.data.soft_labels import check_soft_labels, file_digest, soft_label_dir
from distill.driver.feature_shapes import teacher_hint_paths
from distill.driver.report import build_report, model_entry
from distill.driver.scheduling import embedded_extras, teacher_demand
from distill.spec import JobSpec, SpecError, load_spec
from teachers.ensemble import combine_probs
from teachers.service import TeacherConfig, start_replicas, stop_replicas

# ---------------------------------------------------------------- data


def prepare_data(spec: JobSpec) -> tuple[Path, DatasetMeta]:
    """The shard folder and its metadata (packing the source on first use)."""
    source = Path(spec.data.source)
    root = source if (source / "meta.json").is_file() else spec.data.shards
    norm = spec.data.normalize
    meta = ensure_shards(spec.data.source, root, shard_size=spec.data.shard_size,
                         val_per_class=spec.data.val_per_class, normalize=norm and (norm.mean, norm.std),
                         on_corrupt=spec.data.on_corrupt)
    return root, meta


# ---------------------------------------------------------------- teachers


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


def attach_service(spec: JobSpec) -> Any:
    """A ``ServiceLink`` for this job, after checking the service serves what the job needs (one line if not)."""
    import ray

    from distill.driver.feature_shapes import teacher_hint_paths
    from teachers.controller import ServiceLink, find_service

    name, ns = spec.teachers.service, spec.cluster.namespace
    controller = find_service(name, ns)
    if controller is None:
        raise ClusterError(f"teachers.service: no teacher service {name!r} in namespace {ns!r} on this cluster; "
                           f"start it with `distill serve CONFIG --name {name}` (and pass its --address)")
    info = ray.get(controller.handles.remote(-1))
    for member, needed in zip(spec.teachers.members, teacher_hint_paths(spec).values(), strict=True):
        if member.name not in info["names"]:
            raise SpecError(f"teachers.members: service {name!r} serves {info['names']}, not {member.name!r}")
        missing = [h for h in needed if h not in info["hints"][member.name]]
        if missing:
            raise SpecError(f"teachers.members: service {name!r} does not return {member.name} hints {missing}; "
                            "serve a spec that lists them")
    if info["output"] != spec.teachers.output:
        raise SpecError(f"teachers.output: the job wants {spec.teachers.output}, service {name!r} sends "
                        f"{info['output']}")
    return ServiceLink(name, controller, spec.name)


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
    link = None  # a shared service (teachers.service): attached, not started, so nothing to stop
    try:
        if before_start is not None:
            before_start()
        if serve and spec.teachers.service:
            link = attach_service(spec)
        elif serve:
            console.print(f"starting {sum(m.replicas for m in spec.teachers.members)} teacher replica(s)")
            handles.extend(start_teachers(spec, meta, groups))
        yield link or handles
    finally:
        for group in handles:
            stop_replicas(group)
        for pg in groups:
            release(pg)
        if started_ray:
            ray_env.shutdown()


def teacher_digests(spec: JobSpec) -> dict[str, str]:
    return {m.name: file_digest(m.source) for m in spec.teachers.members if Path(m.source).is_file()}


def check_offline(spec: JobSpec, root: Path, meta: DatasetMeta) -> Path:
    """The soft-label folder for an offline run; one-line ``DataError`` when missing or stale."""
    aug = spec.data.augment
    if aug.mixup > 0 or aug.cutmix > 0:
        raise SpecError("data.augment: mixup/cutmix mix images after the teachers answered; "
                        "offline soft labels cannot follow them (use teachers.mode: online)")
    folder = soft_label_dir(spec.teachers.offline_dir, root, spec.name)
    soft = check_soft_labels(folder, meta, teachers=[m.name for m in spec.teachers.members],
                             views=spec.teachers.views, padding=aug.crop_padding, hflip=aug.hflip,
                             sources=teacher_digests(spec), data_meta=file_digest(Path(root) / "meta.json"))
    stored = dict(zip(soft["teachers"], soft["hints"], strict=True))
    for name, paths in teacher_hint_paths(spec).items():
        missing = [p for p in paths if p not in stored[name]]
        if missing:
            raise DataError(f"{folder}: teacher {name!r} hints {missing} were not stored; rerun teach")
    return folder


# ---------------------------------------------------------------- scoring


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model``'s fp32 logits for ``x`` in eval mode, in batches of 512 (no autograd)."""
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(xb).float() for xb in x.split(512)])


def evaluate_models(spec: JobSpec, root: Path, meta: DatasetMeta, student: nn.Module,
                    teacher_models: dict[str, nn.Module],
                    teacher_logits: list[torch.Tensor] | None = None) -> dict:
    """The report for ``student`` and the spec's teachers on the validation split.

    ``teacher_logits`` (one ``[N, C]`` per teacher, spec order) are the served
    answers when the caller has them; otherwise the local teacher models run.
    """
    x_val, y_val = load_split(root, meta, "val")
    shape = (meta.channels, meta.image_size, meta.image_size)
    student_entry = model_entry(spec.student.arch, student, logits_of(student, x_val), y_val, shape)
    members = [m for m in spec.teachers.members if m.name in teacher_models]
    if teacher_logits is None:
        teacher_logits = [logits_of(teacher_models[m.name], x_val) for m in members]
    teachers = [model_entry(m.name, teacher_models[m.name], z, y_val, shape)
                for m, z in zip(members, teacher_logits, strict=True)]
    ens = combine_probs(teacher_logits, [m.weight for m in members], 1.0,
                        spec.teachers.combine) if teacher_logits else None
    return build_report(spec.name, teachers, ens, student_entry, y_val,
                        extra={"val_samples": len(y_val), "dataset": meta.source})


# ---------------------------------------------------------------- saved students


def locate_checkpoint(path: Path, config: Path | None = None) -> tuple[Path, Path]:
    """(student weights, job spec) from a run folder or a ``student.pt`` (spec beside it by default)."""
    path = Path(path)
    weights = path / "student.pt" if path.is_dir() else path
    if not weights.is_file():
        raise SpecError(f"{weights}: no student weights here (give a run folder or its student.pt)")
    config = config or weights.parent / "config.yaml"
    if not config.is_file():
        raise SpecError(f"{config}: no job spec next to the checkpoint (pass --config)")
    return weights, config


def load_student(path: Path, config: Path | None = None, overrides: list[str] | None = None
                 ) -> tuple[JobSpec, Path, DatasetMeta, nn.Module, dict[str, nn.Module], Path]:
    """A saved student as its job built it, with its data and teachers:
    (spec, shards root, meta, student with the saved weights, teacher models, weights file)."""
    from distill.driver.checks import check_job

    weights, config = locate_checkpoint(path, config)
    spec = load_spec(config, overrides)
    root, meta = prepare_data(spec)
    student, teacher_models = check_job(spec, meta)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        student.load_state_dict(state)
    except (RuntimeError, OSError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"{weights}: does not load into {spec.student.arch} from {config}: {first}") from None
    return spec, root, meta, student, teacher_models, weights
