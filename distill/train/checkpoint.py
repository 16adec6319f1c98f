"""Checkpoint files that are never half-written.

``atomic_save`` writes to a temporary file in the same folder, flushes it to
disk, then renames it over the target: a crash leaves either the old file or
the new one, never a torn one.

DeepSpeed checkpoints are folders (one shard per rank), and a folder cannot be
renamed over a non-empty one in one step. ``AtomicCheckpoint`` has every rank
write into ``<name>.partial``, then rank 0 renames the published folder to
``<name>.old``, ``<name>.partial`` to ``<name>``, and deletes ``<name>.old``.
At every instant ``<name>`` or, between the two renames, ``<name>.old`` is a
complete checkpoint, and ``last_checkpoint`` picks whichever exists; a
``.partial`` folder is never read. A folder is deleted by renaming it to a
hidden ``.<name>.deleting`` first: a process killed inside the recursive delete
(which removes ``latest`` before the shards) would otherwise leave a half-deleted
``<name>.old`` that looks like a checkpoint.

Checkpoints are taken at epoch ends only (global step a multiple of the
epoch's steps). The training data of each epoch is a pure function of
(seed, rank, epoch), so a run resumed from the end of epoch e sees exactly
the batches an uninterrupted run sees from epoch e+1 on; a run stopped mid-
epoch loses (and redoes) that epoch's partial work.

A checkpoint can still be damaged after it was published (a disk, a copy, a
person). ``resumable_checkpoint`` checks each candidate before a resume uses
it - every ``torch.save`` file is a zip archive whose members carry CRCs, and
a DeepSpeed folder's ``latest`` must name its tag folder - and falls back from
``last`` to the best one, saying which file was damaged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint


def atomic_save(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def last_checkpoint(ckpt_dir: str | Path) -> str | None:
    """The Lightning ``last.ckpt`` (a file, or a folder under DeepSpeed) if one exists.

    Falls back to ``last.ckpt.old``: a crash between the two renames of a
    folder publish leaves only that one, and it is complete.
    """
    last = Path(ckpt_dir) / "last.ckpt"
    for path in (last, _old(last)):
        if path.exists():
            return str(path)
    return None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the checkpoint (a file, or a DeepSpeed folder) cannot be resumed from; None when intact."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob("*.pt"))
    if path.is_dir():
        latest = path / "latest"
        if not latest.is_file():  # DeepSpeed writes it with every checkpoint and loads nothing without it
            return f"{path}: has no 'latest' file naming its checkpoint (an interrupted write or delete)"
        tag = latest.read_bytes().decode("utf-8", "replace").strip()
        if not tag.isprintable() or not (path / tag).is_dir():
            return f"{latest}: names tag {tag[:40]!r}, which is not a folder of {path}"
        if not files:
            return f"{path}: holds no checkpoint files"
    for f in files:
        try:
            with zipfile.ZipFile(f) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            return f"{f}: not a readable torch checkpoint ({exc})"
        if bad is not None:
            return f"{f}: damaged (member {bad} fails its checksum)"
    return None


def resumable_checkpoint(ckpt_dir: str | Path) -> tuple[str | None, list[str]]:
    """The newest intact checkpoint (``last``, its ``.old`` twin, then ``best``) and the problems of the
    damaged ones passed over, newest first."""
    last = Path(ckpt_dir) / "last.ckpt"
    damaged = []
    for path in (last, _old(last), Path(ckpt_dir) / "best.ckpt"):
        if not path.exists():
            continue
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path), damaged
        damaged.append(problem)
    return None, damaged


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _old(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def _remove(path: Path) -> None:
    """Delete a checkpoint file or folder; a folder leaves its readable name in one rename first (module docstring)."""
    if path.is_dir() and not path.is_symlink():
        trash = path.with_name(f".{path.name}.deleting")
        _remove_tree(trash)  # a previous delete that was killed
        os.replace(path, trash)
        _remove_tree(trash)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)


def _fsync_tree(path: Path) -> None:
    """Flush a checkpoint's files and folder entries to disk before it is published."""
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    for entry in [*entries, path.parent]:
        fd = os.open(entry, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish(partial: Path, final: Path) -> None:
    """Make a fully written ``partial`` checkpoint (file or folder) visible as ``final``."""
    _fsync_tree(partial)
    if partial.is_file():
        os.replace(partial, final)
        return
    old = _old(final)
    _remove(old)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    _remove(old)


class AtomicCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that publishes each checkpoint atomically, at epoch ends only.

    ``steps_per_epoch`` tells an epoch end from a stop in mid-epoch (``max_steps``):
    a mid-epoch checkpoint would resume at a data position the loader does not
    restart from, so none is written there.
    """

    def __init__(self, *args: Any, steps_per_epoch: int, **kwargs: Any) -> None:
        kwargs.setdefault("enable_version_counter", False)  # fixed names: best.ckpt, last.ckpt
        super().__init__(*args, **kwargs)
        self.steps_per_epoch = steps_per_epoch

    def _at_epoch_end(self, trainer: Any) -> bool:
        return trainer.global_step > 0 and trainer.global_step % self.steps_per_epoch == 0

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._at_epoch_end(trainer):
            super().on_train_epoch_end(trainer, pl_module)
            if self._should_save_on_train_epoch_end(trainer):
                self._refresh_last(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._at_epoch_end(trainer):
            super().on_validation_end(trainer, pl_module)
            if not self._should_save_on_train_epoch_end(trainer):
                self._refresh_last(trainer)

    def _refresh_last(self, trainer: Any) -> None:
        """Lightning writes ``last`` only at steps where a top-k checkpoint was written; a resume
        needs the latest epoch end whether or not the monitored metric improved."""
        if self.save_last and self._last_global_step_saved != trainer.global_step and not (
                trainer.fast_dev_run or trainer.sanity_checking):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._at_epoch_end(trainer):
            super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        return None  # a checkpoint of a failed step is not one to resume from

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        final = Path(filepath)
        partial = _partial(final)
        if trainer.is_global_zero:
            _remove(partial)
        trainer.strategy.barrier()
        super()._save_checkpoint(trainer, str(partial))
        trainer.strategy.barrier()  # every rank's shard is written
        if trainer.is_global_zero:
            publish(partial, final)
        trainer.strategy.barrier()
        self._last_checkpoint_saved = filepath
