"""Augmented views with explicit parameters, for offline teaching (FKD-style).

Online, a view is drawn in the loader and sent to the teachers at once. Offline,
the teachers see the view long before the student does, so the view must be
reproducible: it is stored as numbers, (top, left, flip), and applied to the
decoded image again at training time. The policy is the spec's: reflect-pad by
``crop_padding``, crop back to size at (top, left), mirror if ``flip``; the
same as ``augment.random_crop_flip``. Draws are seeded by (seed, key), so
re-running ``distill teach`` gives the same views.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds

from teachers.offline import ViewBatch

from .loader import CorruptCounter, decode_sample
from .meta import DatasetMeta


def draw_views(key: str, seed: int, views: int, padding: int, hflip: bool) -> np.ndarray:
    """``views`` rows of int16 (top, left, flip) for one sample, a pure function of (seed, key)."""
    rng = np.random.default_rng(zlib.crc32(f"{seed}/{key}".encode()))
    corners = rng.integers(0, 2 * padding + 1, size=(views, 2))
    flips = rng.random(views) < 0.5 if hflip else np.zeros(views, dtype=bool)
    return np.concatenate([corners, flips[:, None]], axis=1).astype(np.int16)


def apply_views(x: torch.Tensor, views: np.ndarray, padding: int) -> torch.Tensor:
    """Crop and mirror each image of ``x [N, C, H, W]`` by its row of ``views [N, 3]``."""
    if padding == 0 and not views[:, 2].any():
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (padding,) * 4, mode="reflect") if padding else x
    out = torch.stack([padded[i, :, top:top + h, left:left + w] for i, (top, left, _) in enumerate(views)])
    flip = torch.from_numpy(views[:, 2].astype(bool))
    if flip.any():
        out[flip] = out[flip].flip(-1)
    return out


def view_batches(root: Path, meta: DatasetMeta, *, views: int, padding: int, hflip: bool, seed: int,
                 batch_images: int, split: str = "train") -> Iterator[ViewBatch]:
    """Every sample of ``split``, shard by shard in file order, as batches of about ``batch_images`` views."""
    per_batch = max(1, batch_images // views)
    fail = CorruptCounter("fail")  # a soft-label cache with holes would silently skew training
    for url in meta.shard_paths(root, split):
        shard = Path(url).name
        samples = wds.tarfile_to_samples(handler=fail)(iter([{"url": url}]))
        decoded = (decode_sample(s, meta) for s in samples)
        for chunk in wds.batched(per_batch, collation_fn=list, partial=True)(decoded):
            keys = [key for _, _, key in chunk]
            params = np.stack([draw_views(k, seed, views, padding, hflip) for k in keys])
            x = torch.stack([img for img, _, _ in chunk]).repeat_interleave(views, dim=0)
            yield ViewBatch(shard, keys, params, apply_views(x, params.reshape(-1, 3), padding))
