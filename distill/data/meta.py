"""The ``meta.json`` that sits beside a dataset's shards.

Training reads the class list, image geometry, normalization and the shard
lists from here rather than from the spec, so a shard folder is self-describing
and a job cannot silently disagree with the data it was packed from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

META_FILE = "meta.json"


class DataError(ValueError):
    """Bad or missing data; the message is one line naming the file or shard."""


@dataclass
class DatasetMeta:
    classes: list[str]
    channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    splits: dict[str, dict] = field(default_factory=dict)  # split -> {"shards": [...], "count": n}
    source: str = ""
    train_order: str = "source"  # "source" (as read) or "shuffled:<seed>" (see pack.pack_arrays)
    skipped: int = 0  # unreadable source images left out at packing (data.on_corrupt: skip)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def shard_paths(self, root: Path, split: str) -> list[str]:
        if split not in self.splits:
            raise DataError(f"{root / META_FILE}: no {split!r} split")
        return [str(root / name) for name in self.splits[split]["shards"]]

    def count(self, split: str) -> int:
        return int(self.splits[split]["count"])

    def save(self, root: Path) -> None:
        tmp = root / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(root / META_FILE)


def load_meta(root: str | Path) -> DatasetMeta:
    root = Path(root)
    path = root / META_FILE
    if not path.is_file():
        raise DataError(f"{path}: not found (pack the data first: distill data pack SRC {root})")
    try:
        doc = json.loads(path.read_text())
        meta = DatasetMeta(**doc)
        if not (isinstance(meta.classes, list) and meta.classes and isinstance(meta.splits, dict)
                and all(isinstance(v, dict) and isinstance(v.get("shards"), list) for v in meta.splits.values())):
            raise ValueError("classes or splits have the wrong shape")
    except (ValueError, TypeError, OSError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise DataError(f"{path}: damaged dataset metadata ({' '.join(str(exc).split())[:160]}); "
                        "repack the data (distill data pack)") from None
    for split in meta.splits:
        for shard in meta.shard_paths(root, split):
            if not Path(shard).is_file():
                raise DataError(f"{shard}: shard listed in {path} is missing")
    return meta
