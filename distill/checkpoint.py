"""Checkpoint files that are never half-written.

``atomic_save`` writes to a temporary file in the same folder, flushes it to
disk, then renames it over the target: a crash leaves either the old file or
the new one, never a torn one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


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
    """The Lightning ``last.ckpt`` (a file, or a folder under DeepSpeed) if one exists."""
    last = Path(ckpt_dir) / "last.ckpt"
    return str(last) if last.exists() else None
