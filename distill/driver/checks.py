"""Checks that need files or models, run before any training starts.

The pydantic spec catches shape-of-the-YAML mistakes; these catch the rest:
a teacher file that is missing or does not load, a teacher whose class count
differs from the data's, a student that cannot be built. Each raises
``SpecError`` with one line naming the field.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from distill.data import DatasetMeta
from distill.spec import JobSpec, SpecError


def check_teachers(spec: JobSpec, meta: DatasetMeta) -> dict[str, nn.Module]:
    """Load every teacher locally once; returns them by name for the report."""
    from teachers.load import load_teacher

    models: dict[str, nn.Module] = {}
    if spec.teachers.mode == "none":
        return models
    for i, member in enumerate(spec.teachers.members):
        where = f"teachers.members.{i}"
        shape = (2, meta.channels, meta.image_size, meta.image_size)
        if not Path(member.source).exists():
            hint = " (run `distill teachers train` first)" if member.train else ""
            raise SpecError(f"{where}.source: file not found: {member.source}{hint}")
        try:
            model = load_teacher(str(member.source), member.format, arch=member.arch, num_classes=None,
                                 arch_kwargs=member.arch_options, input_shape=shape[1:])
        except (ValueError, RuntimeError, OSError) as exc:
            raise SpecError(f"{where}: {exc}") from None
        with torch.inference_mode():
            try:
                out = model(torch.zeros(shape))
            except Exception as exc:  # noqa: BLE001 - any failure here is a spec/data mismatch
                raise SpecError(f"{where}: teacher fails on input {list(shape)}: {exc}") from None
        if out.shape[-1] != meta.num_classes:
            raise SpecError(f"{where}: teacher {member.name!r} outputs {out.shape[-1]} classes "
                            f"but the data has {meta.num_classes}")
        models[member.name] = model
    return models


def check_student(spec: JobSpec, meta: DatasetMeta) -> nn.Module:
    from distill.train.module import build_student

    if spec.student.num_classes is not None and spec.student.num_classes != meta.num_classes:
        raise SpecError(f"student.num_classes: {spec.student.num_classes} but the data (and teachers) have "
                        f"{meta.num_classes} classes")
    try:
        model = build_student(spec, meta.num_classes, meta.channels)
    except (ValueError, TypeError) as exc:
        raise SpecError(f"student: {exc}") from None
    return model


def warn_logit_terms(spec: JobSpec, meta: DatasetMeta, student: nn.Module) -> str | None:
    """Print (and return) a warning when logit terms distill into logits that cannot go negative."""
    from distill.losses import TERM_TYPES, SoftTargetTerm
    from distill.losses.guards import nonnegative_logits_warning

    # Standardized terms compare z-scores, which a student can match with logits all >= 0.
    terms = [t.label() for t in spec.loss.terms
             if issubclass(TERM_TYPES[t.type], SoftTargetTerm) and not t.options().get("standardize")]
    sample = torch.randn(2, meta.channels, meta.image_size, meta.image_size, generator=torch.Generator().manual_seed(0))
    message = nonnegative_logits_warning(student, sample, spec.student.arch, terms) if terms else None
    if message:
        print(f"warning: {message}", file=sys.stderr)
    return message


def check_job(spec: JobSpec, meta: DatasetMeta) -> tuple[nn.Module, dict[str, nn.Module]]:
    student = check_student(spec, meta)
    warn_logit_terms(spec, meta, student)
    teachers = check_teachers(spec, meta)
    if spec.teachers.mode == "online" and spec.cluster.num_workers < 1:
        raise SpecError("cluster.num_workers: must be at least 1")
    return student, teachers
