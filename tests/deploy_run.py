"""A short digits run for the deployment tests: a run folder (config.yaml + student.pt) whose
student was trained for real, with no Ray and no teachers, so every test module can make one
in seconds and export trained weights (a fresh student in eval mode answers nearly the same
class for every image, so agreement on it proves nothing)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from benchmarks.export import train
from distill.data import load_split
from distill.data.meta import load_meta
from distill.driver.checks import check_student
from distill.spec import parse_spec


def short_run(run_dir: Path, digits_root: Path, *, arch: str = "mobilenet_v1", options: dict | None = None,
              scheme: str | None = None, steps: int = 150, lr: float = 3e-3) -> Path:
    """Train the spec's student ``steps`` Adam steps on the digits training split; write the run folder."""
    doc = {"name": "deploy-test", "data": {"source": str(digits_root)}, "teachers": {"mode": "none"},
           "student": {"arch": arch, "variant": "cifar", "options": options or {"alpha": 0.5}},
           "trainer": {"batch_size": 64}, "output": {"dir": str(run_dir), "calibration_batches": 4}}
    if scheme:
        doc["student"]["quantization"] = {"scheme": scheme}
    spec = parse_spec(doc)
    meta = load_meta(digits_root)
    torch.manual_seed(0)  # before the model is built: its init must not depend on the tests run before
    model = check_student(spec, meta).train()
    x, y = load_split(digits_root, meta, "train")
    train(model, x, y, steps, batch=64, lr=lr)  # Adam, one-cycle: real weights and BN statistics
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    torch.save(model.state_dict(), run_dir / "student.pt")
    return run_dir
