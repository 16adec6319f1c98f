"""Training from stored soft labels (``teachers.mode: offline``): no teacher runs.

``distill teach`` wrote, beside each training shard, a shard of the same name
holding every sample's V augmented views (as parameters) and the teachers'
answers for each (``teachers.offline``). Here one rank loads the answers for
its own shards, keyed by ``__key__``, and ``OfflineTeacher`` wraps its loader
(built without augmentation) like ``Prefetcher`` does: for each batch it picks
one stored view per sample, applies that view's crop and flip to the decoded
image, and attaches that view's logits and hints. The view is a pure function
of (seed, epoch, key), so a resumed run sees the same views.
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from teachers.client import TeacherOutput
from teachers.offline import FORMAT_VERSION, SOFT_META
from teachers.service import decode_logits

from .meta import DataError, DatasetMeta
from .views import apply_views

LOGIT_FIELDS = ("logits", "topk_values", "topk_indices")


def soft_label_dir(offline_dir: Path | None, shards: Path, job: str) -> Path:
    """Where a job's soft labels live: ``teachers.offline_dir``, else ``<shards>/soft-<job>``."""
    return Path(offline_dir) if offline_dir is not None else Path(shards) / f"soft-{job}"


def file_digest(path: str | Path) -> str:
    """sha256 of a teacher file: a cache made by other weights is stale."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_soft_meta(folder: Path) -> dict[str, Any]:
    path = Path(folder) / SOFT_META
    if not path.is_file():
        raise DataError(f"{folder}: no soft labels here (run `distill teach CONFIG` first)")
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: damaged soft-label metadata ({' '.join(str(exc).split())[:120]}); "
                        "rerun `distill teach`") from None
    if meta.get("format") != FORMAT_VERSION:
        raise DataError(f"{path}: soft-label format {meta.get('format')!r}, expected {FORMAT_VERSION}; "
                        "rerun `distill teach`")
    return meta


def check_soft_labels(folder: Path, data: DatasetMeta, *, teachers: list[str], views: int, padding: int,
                      hflip: bool, sources: dict[str, str] | None = None,
                      data_meta: str | None = None) -> dict[str, Any]:
    """The cache must match the data, the teachers and the view policy; one line naming the mismatch."""
    meta = read_soft_meta(folder)
    where = f"{Path(folder) / SOFT_META}"
    if meta["teachers"] != teachers:
        raise DataError(f"{where}: made by teachers {meta['teachers']}, the spec has {teachers}; rerun teach")
    made = {"views": meta["views"], "crop_padding": meta["padding"], "hflip": meta["hflip"]}
    wanted = {"views": views, "crop_padding": padding, "hflip": hflip}
    if made != wanted:
        raise DataError(f"{where}: made with {made}, the spec asks for {wanted}; rerun teach")
    if meta["num_classes"] != data.num_classes:
        raise DataError(f"{where}: {meta['num_classes']} classes, the data has {data.num_classes}")
    train = {Path(p).name: None for p in data.splits["train"]["shards"]}
    if sorted(meta["shards"]) != sorted(train) or meta["count"] != data.count("train"):
        raise DataError(f"{where}: made for other training shards ({meta['count']} samples, the data has "
                        f"{data.count('train')}); rerun teach")
    if data_meta is not None and meta.get("data_meta") not in (None, data_meta):
        raise DataError(f"{where}: made for data packed differently (its meta.json changed); rerun teach")
    for name, digest in (sources or {}).items():
        if meta.get("sources", {}).get(name) not in (None, digest):
            raise DataError(f"{where}: teacher {name!r} changed since the soft labels were made; rerun teach")
    return meta


def _array(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


class SoftLabels:
    """The stored answers for some shards, as arrays indexed by sample key."""

    def __init__(self, folder: Path, shards: Iterable[str]) -> None:
        self.meta = read_soft_meta(folder)
        self.padding = int(self.meta["padding"])
        rows: dict[str, list[np.ndarray]] = {}
        self.keys: dict[str, int] = {}
        for shard in shards:
            path = Path(folder) / Path(shard).name
            if not path.is_file():
                raise DataError(f"{path}: soft-label shard missing (rerun `distill teach`)")
            try:
                for sample in wds.tarfile_to_samples()(iter([{"url": str(path)}])):
                    self.keys[sample["__key__"]] = len(self.keys)
                    for ext, blob in sample.items():
                        if ext.endswith(".npy"):
                            rows.setdefault(ext[:-4], []).append(_array(blob))
            except Exception as exc:  # noqa: BLE001 - tar, npy and webdataset errors alike: the file is bad
                raise DataError(f"{path}: damaged soft-label shard ({' '.join(str(exc).split())[:120]}); "
                                "rerun `distill teach`") from None
        self.arrays = {name: np.stack(r) for name, r in rows.items()}  # each [N, V, ...]
        self.views = self.arrays.pop("views")
        self.hints = [{path: f"hint{t}_{j}" for j, path in enumerate(paths)}
                      for t, paths in enumerate(self.meta["hints"])]

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, keys: list[str]) -> np.ndarray:
        try:
            return np.array([self.keys[k] for k in keys])
        except KeyError as exc:
            raise DataError(f"sample {exc.args[0]!r} has no stored soft labels "
                            "(rerun `distill teach`)") from None

    def output(self, rows: np.ndarray, views: np.ndarray) -> TeacherOutput:
        """What the teachers said about view ``views[i]`` of sample ``rows[i]``, as ``TeacherOutput``."""
        logits, hints = [], []
        for t, paths in enumerate(self.hints):
            payload = {f: self.arrays[f][rows, views, t] for f in LOGIT_FIELDS if f in self.arrays}
            if "topk_values" in payload:
                payload["num_classes"] = np.array(self.meta["num_classes"])
            logits.append(decode_logits(payload))
            hints.append({p: torch.from_numpy(self.arrays[name][rows, views]) for p, name in paths.items()})
        return TeacherOutput(logits, hints)


def pick_views(keys: list[str], seed: int, epoch: int, views: int) -> np.ndarray:
    """Which stored view each sample shows this epoch: a pure function of (seed, epoch, key)."""
    return np.array([zlib.crc32(f"{seed}/{epoch}/{k}".encode()) % views for k in keys])


class OfflineTeacher:
    """Iterates ``((x_view, y, keys), TeacherOutput)`` from stored soft labels, like ``Prefetcher``."""

    def __init__(self, loader: Any, labels: SoftLabels, seed: int, length: int | None = None) -> None:
        self.loader, self.labels, self.seed, self.length = loader, labels, seed, length
        self._epochs = 0

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("length unknown")
        return self.length

    def __iter__(self) -> Iterator[tuple[tuple, TeacherOutput]]:
        batches = iter(self.loader)
        # EpochLoader sets its epoch when iteration starts (it may resume mid-run); else count here.
        epoch = getattr(getattr(self.loader, "dataset", None), "epoch", self._epochs)
        self._epochs += 1
        views = self.labels.views.shape[1]
        for x, y, keys in batches:
            keys = list(keys)
            rows = self.labels.rows(keys)
            chosen = pick_views(keys, self.seed, epoch, views)
            x = apply_views(torch.as_tensor(x), self.labels.views[rows, chosen], self.labels.padding)
            yield (x, torch.as_tensor(y), keys), self.labels.output(rows, chosen)
