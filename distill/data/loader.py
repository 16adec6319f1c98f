"""Reading shards for training and validation with webdataset.

Training: each Ray Train worker reads its own slice of the shards (rank::world),
DataLoader workers split that slice again, samples pass a shuffle buffer, and
the stream repeats so every rank yields exactly ``steps_per_epoch`` batches:
equal step counts keep the ranks' collectives in lock-step. Validation: every
rank reads all validation shards in order, so each rank scores the same set
and no cross-rank gather is needed.

Corrupt samples are skipped and counted (``on_corrupt: skip``) or raise
(``on_corrupt: fail``) with the shard named. ``check_shards`` reads every
shard's tar headers (not the images) on the driver before training starts, so
a truncated or overwritten shard is named in one line at once instead of
failing a worker in mid-run.
"""

from __future__ import annotations

import io
import itertools
import random
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from .augment import random_crop_flip
from .meta import DataError, DatasetMeta


def tar_problem(path: str | Path) -> str | None:
    """Why a shard (a plain tar) cannot be read to its end; None when its headers all parse."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        return f"{path}: damaged shard ({' '.join(str(exc).split())[:160] or type(exc).__name__})"
    if not members:
        return f"{path}: damaged shard (no samples)"
    return None


def check_shards(paths: list[str], on_corrupt: str,
                 fix: str = "repack the data, or skip what cannot be read (data.on_corrupt: skip)") -> list[str]:
    """Scan shards before training: ``fail`` raises one ``DataError`` naming the first damaged one;
    ``skip`` returns the problems (the loader then skips what it cannot read, and counts it)."""
    problems = [p for p in map(tar_problem, paths) if p is not None]
    if problems and on_corrupt == "fail":
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]}{more}; {fix}")
    return problems


def _as_given(shards):
    """Node splitter that keeps every shard: ranks are split explicitly (rank::world) before this."""
    yield from shards


class CorruptCounter:
    """A webdataset handler that counts (and skips) or re-raises bad samples."""

    def __init__(self, mode: str = "skip") -> None:
        self.mode = mode
        self.count = 0

    def __call__(self, exc: Exception) -> bool:
        if self.mode == "fail":
            raise DataError(f"corrupt sample: {exc}") from exc
        self.count += 1
        return True


def decode_sample(sample: dict, meta: DatasetMeta) -> tuple[torch.Tensor, int, str]:
    """PNG/JPEG bytes -> normalized float ``[C, H, W]``, class index, key."""
    image_bytes = sample.get("png") or sample.get("jpg") or sample.get("jpeg")
    if image_bytes is None or "cls" not in sample:
        raise DataError(f"sample {sample.get('__key__')!r} in {sample.get('__url__')}: missing image or cls")
    with Image.open(io.BytesIO(image_bytes)) as im:
        arr = np.asarray(im.convert("L" if meta.channels == 1 else "RGB"), dtype=np.float32)
    if arr.shape[0] != meta.image_size or arr.shape[1] != meta.image_size:
        raise DataError(f"sample {sample['__key__']!r}: size {arr.shape[:2]} != {meta.image_size}")
    size = meta.image_size
    x = torch.from_numpy(arr / 255.0).reshape(size, size, meta.channels).permute(2, 0, 1)
    mean = torch.tensor(meta.mean).view(-1, 1, 1)
    std = torch.tensor(meta.std).view(-1, 1, 1)
    label = int(sample["cls"].decode() if isinstance(sample["cls"], bytes) else sample["cls"])
    return (x - mean) / std, label, sample["__key__"]


def _counted(samples, read: list[int]):
    for sample in samples:
        read[0] += 1
        yield sample


class EpochBatches(torch.utils.data.IterableDataset):
    """One epoch of one rank's training batches, a pure function of (seed, rank, epoch).

    Nothing carries over from one epoch to the next: the shard order, the
    shuffle buffer and the augmentation draws are all seeded from
    (seed, rank, epoch) (and the DataLoader worker id), so epoch e reads the
    same batches whether the run got there directly or resumed from a
    checkpoint taken at the end of epoch e-1. The rank's shards are passed
    over repeatedly (each pass in a fresh order) until the epoch has its
    batches, so unequal shard slices still give every rank the same count.
    DataLoader worker w yields the epoch's batches w, w+W, ...; the loader
    takes them round-robin, which restores the order 0, 1, 2, ...
    """

    def __init__(self, shards: list[str], meta: DatasetMeta, *, batch_size: int, batches: int, rank: int,
                 seed: int, shuffle_buffer: int, crop_padding: int, hflip: bool,
                 counter: CorruptCounter) -> None:
        super().__init__()
        self.shards, self.meta, self.batch_size, self.batches = shards, meta, batch_size, batches
        self.rank, self.seed, self.shuffle_buffer = rank, seed, shuffle_buffer
        self.crop_padding, self.hflip, self.counter = crop_padding, hflip, counter
        self.epoch = 0

    def _shard_passes(self, key: str, read: list[int]):
        """Endless passes over the shards, each in a fresh seeded order; fails if a pass read nothing."""
        rng = random.Random(key)
        passes = 0
        while True:
            if passes and not read[0]:
                raise DataError(f"no readable training sample in shards {self.shards}")
            order = list(self.shards)
            rng.shuffle(order)
            passes += 1
            yield from ({"url": url} for url in order)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        key = f"{self.seed}/{self.rank}/{self.epoch}"
        # Every loader worker walks the same shard order and takes every W-th shard.
        read = [0]
        urls = itertools.islice(self._shard_passes(key, read), worker, None, workers)
        samples = _counted(wds.tarfile_to_samples(handler=self.counter)(urls), read)
        if self.shuffle_buffer > 0:
            samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                                  rng=random.Random(f"{key}/{worker}"))(samples)
        rng = np.random.default_rng([self.seed, self.rank, self.epoch, worker])
        decoded = wds.map(lambda s: decode_sample(s, self.meta), handler=self.counter)(samples)
        augmented = (
            (random_crop_flip(x, self.crop_padding, self.hflip, rng), y, name) for x, y, name in decoded)
        batches = wds.batched(self.batch_size, partial=False)(augmented)
        yield from itertools.islice(batches, len(range(worker, self.batches, workers)))


class EpochLoader:
    """Exactly ``steps_per_epoch`` batches per epoch, restartable at any optimizer step.

    Each ``iter()`` asks ``step_source`` (the trainer's global step) where
    training stands: epoch e = step // steps_per_epoch, and the first
    step % steps_per_epoch batches of that epoch, already trained on, are read
    and dropped. A resumed run therefore sees the very batches the
    uninterrupted run saw. Without a ``step_source`` the loader counts the
    epochs it has started itself. Workers are not persistent: each epoch
    forks them with that epoch's seeds.
    """

    def __init__(self, dataset: EpochBatches, num_workers: int) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.step_source: Callable[[], int] | None = None
        self._started = 0

    def __len__(self) -> int:
        return self.dataset.batches

    def __iter__(self):
        steps = self.dataset.batches
        step = self.step_source() if self.step_source is not None else self._started * steps
        epoch, done = divmod(step, steps)
        self._started = epoch + 1
        self.dataset.epoch = epoch
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers)
        return itertools.islice(iter(loader), done, None)


def train_loader(root: Path, meta: DatasetMeta, *, batch_size: int, steps_per_epoch: int, rank: int,
                 world: int, seed: int, shuffle_buffer: int, num_workers: int, crop_padding: int,
                 hflip: bool, counter: CorruptCounter) -> EpochLoader:
    """This rank's training batches: shards ``rank::world``, seeded per (seed, rank, epoch)."""
    shards = meta.shard_paths(root, "train")
    if len(shards) < world:
        raise DataError(f"{root}: {len(shards)} train shards cannot feed {world} workers; "
                        "repack smaller shards")
    mine = shards[rank::world]
    if num_workers > len(mine):
        raise DataError(f"data.num_workers: {num_workers} loader workers but rank {rank} has only "
                        f"{len(mine)} shards; lower it or repack smaller shards")
    dataset = EpochBatches(mine, meta, batch_size=batch_size, batches=steps_per_epoch, rank=rank, seed=seed,
                           shuffle_buffer=shuffle_buffer, crop_padding=crop_padding, hflip=hflip,
                           counter=counter)
    return EpochLoader(dataset, num_workers)


def val_loader(root: Path, meta: DatasetMeta, *, batch_size: int, counter: CorruptCounter) -> wds.WebLoader:
    ds = (
        wds.WebDataset(meta.shard_paths(root, "val"), shardshuffle=False, nodesplitter=_as_given,
                       handler=counter, empty_check=False)
        .map(lambda s: decode_sample(s, meta), handler=counter)
        .batched(batch_size, partial=True)
    )
    return wds.WebLoader(ds, batch_size=None, num_workers=0)


def collate_keys(batch: tuple) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """webdataset's ``batched`` stacks tensors and ints; normalize to (x, y, keys)."""
    x, y, keys = batch
    return torch.as_tensor(x), torch.as_tensor(y, dtype=torch.long), list(keys)


def load_split(root: Path, meta: DatasetMeta, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole (small) split in memory, in shard order: for evaluation and teacher training."""
    xs, ys = [], []
    ds = wds.WebDataset(meta.shard_paths(root, split), shardshuffle=False, nodesplitter=_as_given,
                        empty_check=False).map(lambda s: decode_sample(s, meta))
    for x, y, _ in ds:
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DataError(f"{root}: the {split!r} split is empty")
    return torch.stack(xs), torch.tensor(ys)
