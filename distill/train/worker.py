"""What each Ray Train worker runs: data, teacher client, Lightning + DeepSpeed.

The driver passes the validated spec (as a dict), the dataset folder and the
teacher actor handles in the config. Each worker reads its slice of the
shards, pipelines its batches through the shared teacher pool, and trains the
student under the CPU-capable DeepSpeed strategy. Rank 0 writes TensorBoard
events and, at the end, the student's weights (atomically). A run stopped by
the non-finite guard writes its one-line reason to ``stopped.txt`` instead
and ends normally, so Ray Train does not restart it (a restart would diverge
again) and the driver can report it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cluster.deepspeed_strategy import make_strategy, prepare_cpu_environment
from cluster.train import lightning_plugins, resume_checkpoint, worker_rank
from distill.data import CorruptCounter, load_meta, train_loader, val_loader
from distill.data.augment import MixedBatches
from distill.spec import JobSpec
from distill.train.checkpoint import atomic_save, atomic_write_text, last_checkpoint, resumable_checkpoint
from distill.train.precision import LIGHTNING_PRECISION, resolve_precision

STOPPED_FILE = "stopped.txt"  # in the run folder: why training stopped early (one line), for the driver


def steps_per_epoch(spec: JobSpec, train_count: int, world: int) -> int:
    return spec.trainer.steps_per_epoch or max(1, train_count // (spec.trainer.batch_size * world))


class _NoTeacher:
    """Yields ``(batch, None)`` so the module sees one batch shape with or without teachers."""

    def __init__(self, loader: Any, length: int) -> None:
        self.loader, self.length = loader, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        for batch in self.loader:
            yield batch, None


def train_worker(config: dict[str, Any]) -> None:
    prepare_cpu_environment()
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger
    from ray.train.lightning import prepare_trainer

    from distill.train.callbacks import NonFiniteError, NonFiniteGuard, TeacherStatsCallback
    from distill.train.module import DistillModule
    from distill.train.run_callbacks import run_callbacks
    from teachers.client import Prefetcher, TeacherPool

    spec = JobSpec.model_validate(config["spec"])
    torch.set_num_threads(max(1, int(spec.cluster.cpus_per_worker)))
    rank, world = worker_rank()
    root = Path(config["data_root"])
    meta = load_meta(root)
    steps = steps_per_epoch(spec, meta.count("train"), world)
    pl.seed_everything(spec.seed + rank, workers=True)

    counter = CorruptCounter(spec.data.on_corrupt)
    aug = spec.data.augment
    offline = spec.teachers.mode == "offline" and config.get("soft_labels")  # views come from the cache
    train = stream = train_loader(
        root, meta, batch_size=spec.trainer.batch_size, steps_per_epoch=steps, rank=rank, world=world,
        seed=spec.seed, shuffle_buffer=spec.data.shuffle_buffer, num_workers=spec.data.num_workers,
        crop_padding=0 if offline else aug.crop_padding, hflip=aug.hflip and not offline, counter=counter)
    if (aug.mixup > 0 or aug.cutmix > 0) and not offline:
        train = MixedBatches(train, meta.num_classes, aug.mixup, aug.cutmix, seed=spec.seed + 7919 * rank)
    pool = None
    if spec.teachers.mode == "online" and config.get("teacher_handles"):
        pool = TeacherPool([m.name for m in spec.teachers.members], config["teacher_handles"])
        train = Prefetcher(train, pool, spec.teachers.window, length=steps)
    elif spec.teachers.mode == "inprocess":
        from teachers.inprocess import InProcessTeachers

        train = pool = InProcessTeachers(train, config["teacher_configs"], length=steps)  # type: ignore[assignment]
    elif offline:
        from distill.data.soft_labels import OfflineTeacher, SoftLabels

        mine = meta.shard_paths(root, "train")[rank::world]  # this rank's shards, as train_loader splits them
        train = OfflineTeacher(train, SoftLabels(Path(config["soft_labels"]), mine), spec.seed, length=steps)
    else:
        train = _NoTeacher(train, steps)
    val = val_loader(root, meta, batch_size=max(spec.trainer.batch_size, 256), counter=counter)

    module = DistillModule(config["spec"], meta.num_classes, meta.channels, meta.image_size, steps)
    run_dir = Path(config["run_dir"])
    ckpt_dir = run_dir / "checkpoints"
    logger = TensorBoardLogger(save_dir=str(Path(config["tensorboard_dir"])), name=spec.name,
                               version=config["run_version"], default_hp_metric=False)
    precision, precision_note = resolve_precision(spec.trainer.precision, spec.cluster.use_gpu)
    if precision_note and rank == 0:
        print(precision_note, flush=True)
    trainer = pl.Trainer(
        max_epochs=spec.trainer.epochs,
        max_steps=config.get("stop_after_steps") or -1,  # a planned stop (tests, budgets); resume continues
        accelerator="gpu" if spec.cluster.use_gpu else "cpu",
        devices="auto",
        strategy=make_strategy(spec.trainer.deepspeed_stage, precision, spec.trainer.batch_size,
                               spec.trainer.grad_clip, ray=True),
        plugins=lightning_plugins(),
        precision=LIGHTNING_PRECISION[precision],
        logger=logger,
        callbacks=[*run_callbacks(spec, meta, ckpt_dir=ckpt_dir, steps_per_epoch=steps, world=world,
                                  teacher_val=config.get("teacher_val")),
                   TeacherStatsCallback(pool, counter)],
        use_distributed_sampler=False,
        log_every_n_steps=spec.logging.log_every_n_steps,
        deterministic=spec.trainer.deterministic,
        enable_progress_bar=rank == 0,
        num_sanity_val_steps=0,
    )
    trainer = prepare_trainer(trainer)
    stream.step_source = lambda: trainer.global_step  # each epoch's data restarts from the trainer's step
    # After a Ray Train restart (max_failures) the last checkpoint is one this run wrote: resume from it.
    # A user's --resume passes over damaged checkpoints (the driver has said which); a restart resumes
    # from the last one this run wrote.
    asked = bool(config.get("resume"))
    candidate = resumable_checkpoint(ckpt_dir)[0] if asked else last_checkpoint(ckpt_dir)
    resume = resume_checkpoint(candidate, resume=asked, at_start=config.get("checkpoint_at_start"))
    if resume and rank == 0:
        print(f"resuming from {resume}", flush=True)
    try:
        trainer.fit(module, train_dataloaders=train, val_dataloaders=val, ckpt_path=resume)
    except NonFiniteError as exc:  # every rank stops at the same step; the driver reports it
        if rank == 0:
            atomic_write_text(str(exc), run_dir / STOPPED_FILE)
        return
    guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
    if guard.skipped and rank == 0:
        print(f"skipped {guard.skipped} step(s) with a non-finite loss or gradient (trainer.on_nonfinite: skip)",
              flush=True)
    _save_student(trainer, module, run_dir / "student.pt", spec.trainer.deepspeed_stage, rank)


def _save_student(trainer: Any, module: Any, path: Path, stage: int, rank: int) -> None:
    """Full student weights on rank 0; ZeRO-3 first gathers the partitioned parameters."""
    params = list(module.student.parameters())
    if stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            state = ({k: v.detach().clone() for k, v in module.student.state_dict().items()}
                     if rank == 0 else None)
    else:
        state = module.student.state_dict() if rank == 0 else None
    if rank == 0:
        atomic_save(state, path)
    trainer.strategy.barrier()
