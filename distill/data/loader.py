"""Reading shards for training and validation with webdataset.

Training: each Ray Train worker reads its own slice of the shards (rank::world),
DataLoader workers split that slice again, samples pass a shuffle buffer, and
the stream repeats so every rank yields exactly ``steps_per_epoch`` batches:
equal step counts keep the ranks' collectives in lock-step. Validation: every
rank reads all validation shards in order, so each rank scores the same set
and no cross-rank gather is needed.

Corrupt samples are skipped and counted (``on_corrupt: skip``) or raise
(``on_corrupt: fail``) with the shard named.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from .augment import random_crop_flip
from .meta import DataError, DatasetMeta


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
    x = torch.from_numpy(arr / 255.0).reshape(meta.image_size, meta.image_size, meta.channels).permute(2, 0, 1)
    mean = torch.tensor(meta.mean).view(-1, 1, 1)
    std = torch.tensor(meta.std).view(-1, 1, 1)
    label = int(sample["cls"].decode() if isinstance(sample["cls"], bytes) else sample["cls"])
    return (x - mean) / std, label, sample["__key__"]


def _augmenter(padding: int, hflip: bool, seed: int) -> Callable:
    state: dict[str, np.random.Generator] = {}

    def apply(item: tuple[torch.Tensor, int, str]) -> tuple[torch.Tensor, int, str]:
        if "rng" not in state:  # seeded per DataLoader worker process
            info = torch.utils.data.get_worker_info()
            state["rng"] = np.random.default_rng([seed, info.id if info else 0])
        x, y, key = item
        return random_crop_flip(x, padding, hflip, state["rng"]), y, key

    return apply


def train_loader(root: Path, meta: DatasetMeta, *, batch_size: int, steps_per_epoch: int, rank: int,
                 world: int, seed: int, shuffle_buffer: int, num_workers: int, crop_padding: int,
                 hflip: bool, counter: CorruptCounter) -> wds.WebLoader:
    shards = meta.shard_paths(root, "train")
    if len(shards) < world:
        raise DataError(f"{root}: {len(shards)} train shards cannot feed {world} workers; repack smaller shards")
    mine = shards[rank::world]
    ds = (
        wds.WebDataset(mine, shardshuffle=len(mine), nodesplitter=_as_given,
                       workersplitter=wds.split_by_worker, handler=counter, seed=seed + rank,
                       empty_check=False)
        .repeat()
        .shuffle(shuffle_buffer, rng=random.Random(seed + rank))
        .map(lambda s: decode_sample(s, meta), handler=counter)
        .map(_augmenter(crop_padding, hflip, seed + 1000 * rank))
        .batched(batch_size, partial=False)
    )
    loader = wds.WebLoader(ds, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)
    return loader.with_epoch(steps_per_epoch)


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
