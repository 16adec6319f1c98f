"""The real path, tiny: Ray teacher actors, 2 Ray Train workers, Lightning under DeepSpeed ZeRO-2 on CPU.

Asserts on outcomes: the loss fell, TensorBoard holds each loss term's scalars,
the student checkpoint and report exist with sane values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.tb_events import load_events, scalar_values

ROOT = Path(__file__).resolve().parents[1]


def tiny_job(tmp_path: Path, digits_root: Path, **trainer) -> dict:
    doc = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    doc["name"] = "tiny"
    doc["data"]["source"] = str(digits_root)
    for m in doc["teachers"]["members"]:
        m["source"] = str(tmp_path / f"{m['name']}.pt")
        m["train"]["epochs"] = 4
        m["resources"] = {"num_cpus": 0.25}
    doc["trainer"].update({"epochs": 4, "steps_per_epoch": 12, "batch_size": 32, "deepspeed_stage": 2,
                           **trainer})
    doc["logging"] = {"tensorboard": str(tmp_path / "tb"), "log_every_n_steps": 2}
    doc["output"] = {"dir": str(tmp_path / "run")}
    return doc


@pytest.mark.slow
def test_tiny_job_end_to_end(tmp_path, digits_root, ray_session):
    from distill.commands.runner import prepare_data, run_job
    from distill.commands.teacher_training import train_teachers
    from distill.spec import parse_spec

    spec = parse_spec(tiny_job(tmp_path, digits_root))
    root, meta = prepare_data(spec)
    accs = train_teachers(spec, root, meta)
    assert min(accs.values()) > 0.5  # teachers learned something real

    report = run_job(spec)

    run_dir = tmp_path / "run"
    assert (run_dir / "student.pt").stat().st_size > 10_000
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["ensemble_top1"] == report["ensemble_top1"] > 0.5
    assert {t["name"] for t in saved["teachers"]} == {"cnn", "mlp"}
    student = saved["student"]
    assert student["params"] < min(t["params"] for t in saved["teachers"])
    assert student["macs"] > 0 and 0.0 <= student["top1"] <= 1.0
    assert student["top1"] > 0.2  # 4 tiny epochs: well above the 10% of a constant guess

    events = load_events(tmp_path / "tb" / "tiny")
    tags = set(events.Tags()["scalars"])
    for term in ("ce", "kd", "total"):
        assert f"loss/{term}_step" in tags and f"loss/{term}_epoch" in tags, tags
    assert "val/top1" in tags and "lr" in tags
    assert "teachers/latency_p50_ms" in tags
    per_epoch = scalar_values(events, "loss/total_epoch")
    assert len(per_epoch) == 4
    assert per_epoch[-1] < 0.8 * per_epoch[0], per_epoch


@pytest.mark.slow
def test_inprocess_teachers_job(tmp_path, digits_root, ray_session):
    """teachers.mode: inprocess: no actors; each training worker runs the teachers in its step."""
    from distill.commands.runner import prepare_data, run_job
    from distill.commands.teacher_training import train_teachers
    from distill.spec import parse_spec

    doc = tiny_job(tmp_path, digits_root)
    doc["teachers"]["mode"] = "inprocess"
    spec = parse_spec(doc)
    root, meta = prepare_data(spec)
    train_teachers(spec, root, meta)
    report = run_job(spec)
    assert report["ensemble_top1"] > 0.5 and report["student"]["top1"] > 0.2
    events = load_events(tmp_path / "tb" / "tiny")
    kd = scalar_values(events, "loss/kd_epoch")
    assert len(kd) == 4 and kd[-1] < kd[0], kd  # the KD term had teacher answers to learn from
    tags = set(events.Tags()["scalars"])
    assert "teachers/latency_p50_ms" not in tags  # no actors: nothing served
    assert min(scalar_values(events, "teachers/student_wait_ms_per_step")) > 0  # every step ran the teachers
