"""`distill teach`: run the ensemble once over the training set and store its soft labels.

The same actors and client as online teaching produce the answers (so they
are equal to what an online run would be sent); ``teachers.offline`` writes them
as shards beside the data. A run with ``teachers.mode: offline`` then trains
from them with no teacher started, after ``check_offline`` has confirmed that
they were made for this data, these teachers and this view policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from distill.data.meta import DataError
from distill.data.soft_labels import file_digest, soft_label_dir
from distill.driver.stages import prepare_data, served_teachers, teacher_digests
from distill.spec import JobSpec, SpecError


def teach(spec: JobSpec, *, address: str | None = None, batch_images: int = 256,
          console: Console | None = None) -> dict[str, Any]:
    """Write the job's soft labels; returns the folder's ``meta.json`` plus ``folder`` and ``bytes``."""
    from distill.data.views import view_batches
    from distill.driver.checks import check_teachers
    from teachers.client import TeacherPool
    from teachers.offline import write_soft_labels

    console = console or Console()
    if not spec.teachers.members:
        raise SpecError("teachers.members: `distill teach` needs at least one teacher")
    aug = spec.data.augment
    if aug.mixup > 0 or aug.cutmix > 0:
        raise SpecError("data.augment: mixup/cutmix cannot be stored as offline views; turn them off")
    root, meta = prepare_data(spec)
    check_teachers(spec, meta)
    folder = soft_label_dir(spec.teachers.offline_dir, root, spec.name)
    views = spec.teachers.views
    if views > 1 and aug.crop_padding == 0 and not aug.hflip:
        raise SpecError(f"teachers.views: {views} views, but data.augment makes every view the same "
                        "(set crop_padding or hflip, or views: 1)")
    info = {"job": spec.name, "views": views, "padding": aug.crop_padding, "hflip": aug.hflip,
            "seed": spec.seed, "num_classes": meta.num_classes, "data": str(Path(root).resolve()),
            "sources": teacher_digests(spec), "data_meta": file_digest(Path(root) / "meta.json")}
    address = address or spec.cluster.address or ("auto" if spec.teachers.service else None)
    with served_teachers(spec, meta, address, serve=True, console=console) as handles:
        pool = TeacherPool([m.name for m in spec.teachers.members], handles)
        batches = view_batches(root, meta, views=views, padding=aug.crop_padding, hflip=aug.hflip,
                               seed=spec.seed, batch_images=batch_images)
        soft = write_soft_labels(batches, pool, folder, info=info, output=spec.teachers.output,
                                 topk=spec.teachers.topk, window=spec.teachers.window,
                                 total=meta.count("train"))
    size = sum(p.stat().st_size for p in folder.glob("*.tar"))
    if soft["count"] != meta.count("train"):
        raise DataError(f"{folder}: wrote {soft['count']} samples, the data has {meta.count('train')}")
    console.print(f"soft labels: {soft['count']} samples x {views} view(s) x {len(spec.teachers.members)} teacher(s), "
                  f"{size / max(1, soft['count']):.0f} bytes/sample on disk -> {folder}")
    return {**soft, "folder": str(folder), "bytes": size}
