"""Running a real ``distill run`` from a benchmark: one child process per job, its output in a log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def distill_run(config: Path, sets: dict[str, Any], log: Path) -> None:
    """``distill run config --set k=v ...`` from the repository root; exits with the log's path on failure.

    A child process per job: each starts and stops its own embedded Ray, and a crash in one job
    cannot take the sweep's driver down with it."""
    cmd = [sys.executable, "-m", "distill.cli", "run", str(config)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise SystemExit(f"{config.name} {sets}: distill run exited {rc}; see {log}")
