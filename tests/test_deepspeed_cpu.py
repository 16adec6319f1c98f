"""The CPU-capable DeepSpeed strategy under plain Lightning (no Ray), 2 processes via torchrun.

ZeRO-2 is covered through Ray Train by the end-to-end test; here ZeRO-3 (the
stage that partitions parameters) trains a small regression and its loss falls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_lightning_deepspeed_zero3_on_two_cpu_processes(tmp_path):
    out = tmp_path / "result.json"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         str(ROOT / "tests" / "scripts" / "lightning_deepspeed.py"), "3", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2
    assert result["engine"] == "DeepSpeedEngine"
    assert result["last"] < 0.2 * result["first"]
