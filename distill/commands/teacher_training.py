"""`distill teachers train`: make the teachers a spec names, where their files are missing.

Users normally bring trained teachers. The embedded demo has none to bring, so
each teacher entry with a ``train:`` block and a project architecture is
trained here on the spec's training split with plain torch (one process, no
Ray: teachers for small data train in seconds) and saved atomically as a
state dict that ``teachers.load`` reads back.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from distill.data import DatasetMeta, load_split
from distill.data.augment import random_crop_flip
from distill.spec import JobSpec, SpecError, TeacherSpec
from distill.train.checkpoint import atomic_save


def _train_one(member: TeacherSpec, root: Path, meta: DatasetMeta, spec: JobSpec, console: Console) -> float:
    from teachers.archs import create_teacher

    recipe = member.train
    assert recipe is not None
    torch.manual_seed(recipe.seed)
    model = create_teacher(member.arch, num_classes=meta.num_classes, in_chans=meta.channels,
                           **member.arch_options)
    x_train, y_train = load_split(root, meta, "train")
    x_val, y_val = load_split(root, meta, "val")
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = recipe.epochs * ((len(x_train) + recipe.batch_size - 1) // recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(recipe.seed)
    import numpy as np

    rng = np.random.default_rng(recipe.seed)
    pad = spec.data.augment.crop_padding
    with console.status(f"training teacher {member.name}") as status:
        for epoch in range(recipe.epochs):
            model.train()
            for idx in torch.randperm(len(x_train), generator=gen).split(recipe.batch_size):
                xb = torch.stack([random_crop_flip(x, pad, spec.data.augment.hflip, rng) for x in x_train[idx]])
                loss = F.cross_entropy(model(xb), y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            status.update(f"training teacher {member.name}: epoch {epoch + 1}/{recipe.epochs} loss {loss:.3f}")
    model.eval()
    with torch.inference_mode():
        top1 = (model(x_val).argmax(1) == y_val).float().mean().item()
    atomic_save(model.state_dict(), member.source)
    return top1


def train_teachers(spec: JobSpec, root: Path, meta: DatasetMeta, force: bool = False) -> dict[str, float]:
    """Train each teacher with a ``train:`` block whose file is missing (or all with ``force``)."""
    from teachers.archs import TEACHER_ARCHS

    console = Console()
    results: dict[str, float] = {}
    for i, member in enumerate(spec.teachers.members):
        if Path(member.source).exists() and not force:
            console.print(f"teacher {member.name}: {member.source} exists, skipped")
            continue
        if member.train is None:
            raise SpecError(f"teachers.members.{i}.train: {member.source} is missing and no train: recipe is given")
        if member.arch not in TEACHER_ARCHS:
            raise SpecError(f"teachers.members.{i}.arch: {member.arch!r} is not a project teacher architecture "
                            f"({sorted(TEACHER_ARCHS)}); bring trained weights instead")
        results[member.name] = _train_one(member, root, meta, spec, console)
        console.print(f"teacher {member.name}: validation top-1 {results[member.name]:.4f} -> {member.source}")
    return results
