"""Offline teaching: run the ensemble once over a dataset and store its answers as WebDataset shards.

The answers are made by the same actors and client as online teaching, so a
stored soft label equals the one the student would have been sent, bit for
bit in the stored precision. The folder (``<shards>/soft-<job>/`` unless the
spec says otherwise) holds one tar per data shard, with the same file name and
the same samples in the same order (equal ``__key__``), and ``meta.json``,
written last: a folder without it is incomplete and is never read. The folder
is built under ``<name>.partial`` and renamed into place, so a crash leaves the
previous cache intact.

One sample of V augmented views (FKD-style) and T teachers has:

- ``views.npy``: int16 ``[V, 3]``, each view's (top, left, flip): the crop's
  corner in the image reflect-padded by ``meta.json``'s ``padding``, and 1 if
  mirrored;
- ``logits.npy``: ``[V, T, C]`` fp16 or fp32 (``output``), or, for
  ``output: topk``, ``topk_values.npy`` fp16 and ``topk_indices.npy`` int16
  ``[V, T, k]``;
- ``hint<t>_<j>.npy``: fp16 ``[V, ...]``, teacher t's output at its j-th hint path
  (``meta.json``'s ``hints[t][j]``; paths are not put in member names, which
  webdataset lower-cases).
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .client import Prefetcher, TeacherOutput, TeacherPool
from .service import encode_logits

SOFT_META = "meta.json"
FORMAT_VERSION = 1


@dataclass
class ViewBatch:
    """Samples of one data shard, each as V views: what a request to the teachers carries."""

    shard: str  # data shard file name; the soft shard gets the same one
    keys: list[str]
    views: np.ndarray  # int16 [n, V, 3]
    x: torch.Tensor  # [n * V, C, H, W], sample-major


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def sample_records(batch: ViewBatch, out: TeacherOutput, output: str, topk: int) -> Iterator[dict[str, Any]]:
    """One tar record per sample: its views, every teacher's encoded logits, and the hints."""
    n, views = len(batch.keys), batch.views.shape[1]
    arrays: dict[str, np.ndarray] = {}
    encoded = [encode_logits(z, output, topk) for z in out.logits]  # fp32 back to the wire's precision
    for field in ("logits", "topk_values", "topk_indices"):
        if field in encoded[0]:
            arrays[field] = np.stack([e[field].reshape(n, views, -1) for e in encoded], axis=2)
    for t, hints in enumerate(out.hints):
        for j, h in enumerate(hints.values()):
            arrays[f"hint{t}_{j}"] = h.numpy().reshape(n, views, *h.shape[1:])
    for i, key in enumerate(batch.keys):
        record = {"__key__": key, "views.npy": npy_bytes(batch.views[i])}
        record.update({f"{name}.npy": npy_bytes(a[i]) for name, a in arrays.items()})
        yield record


def write_soft_labels(batches: Iterable[ViewBatch], pool: TeacherPool, out_dir: Path, *, info: dict[str, Any],
                      output: str, topk: int, window: int, total: int | None = None) -> dict[str, Any]:
    """Teach every batch and write the folder; returns its ``meta.json`` content.

    ``info`` goes into ``meta.json`` as is (what the reader checks: views, padding, data, teachers).
    """
    import webdataset as wds
    from rich.progress import Progress

    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    counts: dict[str, int] = {}
    hint_paths: list[list[str]] = [[] for _ in pool.names]
    sink, current = None, None
    try:
        with Progress() as progress:
            task = progress.add_task(f"teaching -> {out_dir.name}", total=total)
            requests = ((b.x, b) for b in batches)  # the Prefetcher sends element 0 to the teachers
            for (_, batch), out in Prefetcher(requests, pool, window):
                if batch.shard != current:
                    if sink is not None:
                        sink.close()
                    current = batch.shard
                    sink = wds.TarWriter(str(partial / current), encoder=False, mtime=0)
                hint_paths = [list(h) for h in out.hints]
                for record in sample_records(batch, out, output, topk):
                    sink.write(record)
                counts[batch.shard] = counts.get(batch.shard, 0) + len(batch.keys)
                progress.advance(task, len(batch.keys))
    finally:
        if sink is not None:
            sink.close()
    meta = {"format": FORMAT_VERSION, **info, "output": output, "topk": topk, "teachers": pool.names,
            "hints": hint_paths, "shards": counts, "count": sum(counts.values())}
    (partial / SOFT_META).write_text(json.dumps(meta, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    return meta
