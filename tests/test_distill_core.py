"""Distillation core: feature terms wired through the driver, atomic checkpoints and resume,
TensorBoard contents, `distill eval`, DeepSpeed gradient clipping.

One tiny real job is trained once for the module (Ray teacher actors, 2 Ray Train workers,
Lightning under DeepSpeed ZeRO-2 on CPU, a ternary TTQ student, a FitNets hint stage followed
by KD + CE) and several tests read what it left: its TensorBoard events, checkpoints, student
weights and report. The resume test stops a copy of the same job mid-epoch, resumes it, and
must end bit-identical to the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.tb_events import load_events, scalar_values
from tests.test_e2e import tiny_job

ROOT = Path(__file__).resolve().parents[1]
STEPS, EPOCHS = 4, 3  # 12 optimizer steps; the hint stage is epoch 0, KD + CE epochs 1-2

TERMS = [
    {"type": "hint", "weight": 1.0, "student_path": "stages.2", "teacher": "cnn", "teacher_path": "stages.1",
     "stage_epochs": 1},
    {"type": "ce", "weight": 0.3, "start_epoch": 1},
    {"type": "kd", "weight": 0.7, "temperature": 4.0, "start_epoch": 1},
]


def job_doc(tmp: Path, digits_root: Path, teachers: Path, out: str) -> dict:
    doc = tiny_job(tmp, digits_root, epochs=EPOCHS, steps_per_epoch=STEPS, batch_size=16, deterministic=True)
    for m in doc["teachers"]["members"]:
        m["source"] = str(teachers / f"{m['name']}.pt")
    doc["student"]["quantization"] = {"scheme": "ttq", "simulate_export": True}
    doc["loss"]["terms"] = [dict(t) for t in TERMS]
    doc["logging"] = {"tensorboard": str(tmp / out / "tb"), "log_every_n_steps": 2}
    doc["output"] = {"dir": str(tmp / out / "run")}
    return doc


@pytest.fixture(scope="module")
def job(tmp_path_factory, digits_root, ray_session):
    from distill.commands.runner import prepare_data, run_job
    from distill.commands.teacher_training import train_teachers
    from distill.spec import parse_spec

    tmp = tmp_path_factory.mktemp("core")
    doc = job_doc(tmp, digits_root, tmp / "teachers", "full")
    spec = parse_spec(doc)
    root, meta = prepare_data(spec)
    train_teachers(spec, root, meta)
    report = run_job(spec)
    return SimpleNamespace(tmp=tmp, digits_root=digits_root, report=report, run_dir=tmp / "full" / "run",
                           tb=tmp / "full" / "tb")


def _global_step(ckpt: Path) -> int:
    states = torch.load(ckpt / "checkpoint" / "mp_rank_00_model_states.pt", map_location="cpu",
                        weights_only=False)
    return int(states["global_step"])


# ---------------------------------------------------------------- no training


@pytest.fixture(scope="module")
def untrained_teachers(tmp_path_factory) -> Path:
    """Demo teacher files with random weights: enough for shape dry runs, in milliseconds."""
    from teachers.archs import create_teacher

    folder = tmp_path_factory.mktemp("teachers")
    for name, arch in (("cnn", "digits_cnn"), ("mlp", "digits_mlp")):
        torch.save(create_teacher(arch, num_classes=10).state_dict(), folder / f"{name}.pt")
    return folder


def _resolve(doc: dict):
    from distill.commands.runner import prepare_data
    from distill.driver.checks import check_job
    from distill.driver.feature_shapes import resolve_feature_terms
    from distill.spec import parse_spec

    spec = parse_spec(doc)
    root, meta = prepare_data(spec)
    student, teachers = check_job(spec, meta)
    return spec, resolve_feature_terms(spec, student, teachers, (1, 8, 8))


def test_feature_terms_get_teacher_hints_and_shapes(tmp_path, digits_root, untrained_teachers):
    from distill.driver.feature_shapes import teacher_hint_paths
    from distill.spec import SpecError

    doc = job_doc(tmp_path, digits_root, untrained_teachers, "shapes")
    doc["teachers"]["members"][1]["hints"] = ["stages.0"]
    doc["loss"]["terms"] += [
        {"type": "at", "weight": 1.0, "teacher": "cnn", "pairs": [["stages.1", "stages.0"]]},
        {"type": "fsp", "weight": 1.0, "teacher": "cnn", "student_pairs": [["stages.1", "stages.2"]],
         "teacher_pairs": [["stages.0", "stages.1"]]},
    ]
    spec, resolved = _resolve(doc)
    # Each actor returns its own hints plus every layer a term reads.
    assert teacher_hint_paths(spec) == {"cnn": ["stages.1", "stages.0"], "mlp": ["stages.0"]}
    hint, _ce, _kd, _at, fsp = resolved["loss"]["terms"]
    # MobileNet v1 (alpha 0.25, cifar) stage 2 is 64 channels at 4x4; the CNN's stage 1 is 128 at 4x4.
    assert hint["student_shape"] == [64, 4, 4] and hint["teacher_shape"] == [128, 4, 4]
    assert fsp["student_shapes"] == {"stages.1": [32, 8, 8], "stages.2": [64, 4, 4]}
    assert fsp["teacher_shapes"] == {"stages.0": [64, 8, 8], "stages.1": [128, 4, 4]}

    from distill.train.module import DistillModule

    module = DistillModule(resolved, 10, 1, 8, STEPS)
    regressor = module.terms[0].regressor
    assert isinstance(regressor, torch.nn.Conv2d)
    assert (regressor.in_channels, regressor.out_channels) == (64, 128)
    groups = module.configure_optimizers()["optimizer"].param_groups
    optimized = {id(p) for group in groups for p in group["params"]}
    assert all(id(p) in optimized for p in module.terms.parameters())  # regressors are trained

    bad = [("student_path", "stages.9", r"loss\.terms\.0: the student has no layer 'stages\.9'"),
           ("teacher_path", "nope", r"loss\.terms\.0: teacher 'cnn': hint path 'nope'"),
           ("student_shape", [3, 4, 4], r"loss\.terms\.0\.student_shape: given \[3, 4, 4\]")]
    for key, value, message in bad:
        broken = json.loads(json.dumps(doc))
        broken["loss"]["terms"][0][key] = value
        with pytest.raises(SpecError, match=message):
            _resolve(broken)
    hint_only = json.loads(json.dumps(doc))
    hint_only["loss"]["terms"] = hint_only["loss"]["terms"][:1]  # nothing to train on after the hint stage
    with pytest.raises(SpecError, match="no term is active in epoch 1"):
        _resolve(hint_only)


def test_checkpoint_publish_is_atomic(tmp_path):
    from distill.train.checkpoint import last_checkpoint, publish

    ckpt = tmp_path / "checkpoints"
    assert last_checkpoint(ckpt) is None
    for step in (1, 2):
        partial = ckpt / "last.ckpt.partial" / "checkpoint"
        partial.mkdir(parents=True)
        (partial / "shard").write_text(f"step {step}")
        publish(ckpt / "last.ckpt.partial", ckpt / "last.ckpt")
        assert (ckpt / "last.ckpt" / "checkpoint" / "shard").read_text() == f"step {step}"
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.ckpt"]
    # A crash between the two renames leaves only last.ckpt.old, which is complete: resume from it.
    os.replace(ckpt / "last.ckpt", ckpt / "last.ckpt.old")
    (ckpt / "last.ckpt.partial").mkdir()  # and a torn write, which is never read
    assert last_checkpoint(ckpt) == str(ckpt / "last.ckpt.old")


@pytest.mark.slow
def test_deepspeed_gradient_clipping_applies(tmp_path):
    """spec trainer.grad_clip -> DeepSpeed ``gradient_clipping``: one lr-1 SGD step moves the
    weights by the clipped gradient (norm <= clip) instead of the full one."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = tmp_path / "clip.json"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29541",
         str(ROOT / "tests" / "scripts" / "deepspeed_clip.py"), "2", "32", "0.01", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["engine"] == "DeepSpeedEngine"
    assert 0.009 < result["change_norm"] <= 0.01 + 1e-6, result  # unclipped it is ~2500


# ---------------------------------------------------------------- the trained job


@pytest.mark.slow
def test_tensorboard_has_every_signal(job):
    run = next((job.tb / "tiny").iterdir())
    assert re.fullmatch(r"\d{8}-\d{6}", run.name)  # runs are <job>/<date-time>
    events = load_events(job.tb / "tiny")
    scalars = set(events.Tags()["scalars"])
    for tag in ("loss/hint_step", "loss/kd_step", "loss/ce_step", "loss/total_epoch", "lr", "val/top1",
                "val/top5", "val/ensemble_top1", "val/teacher_cnn_top1", "val/teacher_mlp_top1",
                "val/agreement_top1", "val/kl_teacher_student", "train/samples_per_s",
                "teachers/student_wait_ms_per_step", "quant/frac_zero"):
        assert tag in scalars, (tag, sorted(scalars))
    # FitNets' two stages: the hint term only in epoch 0, KD from epoch 1 on.
    assert max(e.step for e in events.Scalars("loss/hint_step")) <= STEPS
    assert min(e.step for e in events.Scalars("loss/kd_step")) > STEPS
    # The teachers' accuracy is logged from the same validation images the report scores.
    ensemble = scalar_values(events, "val/ensemble_top1")[-1]
    assert ensemble == pytest.approx(job.report["ensemble_top1"], abs=1e-6)
    assert all(0.0 <= v <= 1.0 for v in scalar_values(events, "val/agreement_top1"))
    assert all(v >= 0.0 for v in scalar_values(events, "val/kl_teacher_student"))
    assert all(v > 0 for v in scalar_values(events, "train/samples_per_s"))
    # Ternary layers: the fraction of each code -1/0/+1, summing to one, and weight histograms.
    layers = {t.split("/")[1] for t in scalars if re.fullmatch(r"quant/[^/]+/frac_zero", t)}
    assert layers
    for layer in layers:
        fractions = [scalar_values(events, f"quant/{layer}/frac_{code}")[-1]
                     for code in ("minus1", "zero", "plus1")]
        assert sum(fractions) == pytest.approx(1.0)
    histograms = set(events.Tags()["histograms"])
    assert {f"quant/{layer}/weight" for layer in layers} <= histograms
    assert {f"quant/{layer}/latent" for layer in layers} <= histograms
    images = events.Images("val/confusion_matrix")
    assert len(images) == EPOCHS and images[0].width > 100


@pytest.mark.slow
def test_checkpoints_and_report(job):
    ckpt = job.run_dir / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["best.ckpt", "last.ckpt"]  # nothing partial left
    assert _global_step(ckpt / "last.ckpt") == EPOCHS * STEPS
    assert _global_step(ckpt / "best.ckpt") % STEPS == 0
    report = json.loads((job.run_dir / "report.json").read_text())
    student = report["student"]
    fp32_bytes = 4 * student["params"]
    assert student["bytes"] < 0.5 * fp32_bytes  # ternary layers stored at 2 bits
    for entry in [*report["teachers"], report["ensemble"]]:
        assert entry["compression_rate"] > 1 and entry["bytes_ratio"] > entry["compression_rate"]
        assert entry["speedup"] > 0


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(job):
    from distill.commands.runner import run_job
    from distill.spec import parse_spec

    spec = parse_spec(job_doc(job.tmp, job.digits_root, job.tmp / "teachers", "resumed"))
    run_dir = job.tmp / "resumed" / "run"
    # Stop in the middle of epoch 1: the last checkpoint is the end of epoch 0, so the resume
    # also redoes the two steps the stop threw away.
    run_job(spec, stop_after_steps=STEPS + 2)
    assert _global_step(run_dir / "checkpoints" / "last.ckpt") == STEPS
    run_job(spec, resume=True)

    assert _global_step(run_dir / "checkpoints" / "last.ckpt") == EPOCHS * STEPS
    resumed = torch.load(run_dir / "student.pt", weights_only=True)
    reference = torch.load(job.run_dir / "student.pt", weights_only=True)
    assert resumed.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(resumed[name], value), name
    # One TensorBoard run, continued: validation at the end of every epoch.
    events = load_events(job.tmp / "resumed" / "tb" / "tiny")
    assert len(list((job.tmp / "resumed" / "tb" / "tiny").iterdir())) == 1
    # (Lightning logs epoch-end metrics at the epoch's last step index.)
    val_steps = sorted({e.step for e in events.Scalars("val/top1")})
    assert val_steps == [STEPS * (e + 1) - 1 for e in range(EPOCHS)]


@pytest.mark.slow
def test_eval_cli_reports_a_saved_student(job):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    packed = job.tmp / "packed" / "student.pt"
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "eval", str(job.run_dir), "--json",
                           "--export", str(packed)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["student"]["top1"] == pytest.approx(job.report["student"]["top1"], abs=1e-6)
    assert {t["name"] for t in report["teachers"]} == {"cnn", "mlp"}
    for entry in [*report["teachers"], report["ensemble"]]:
        assert {"compression_rate", "bytes_ratio", "speedup"} <= entry.keys()
    for key in ("params", "bytes", "macs", "latency_ms"):
        assert report["student"][key] > 0
    # The TTQ student's packed export: one file, loaded back, predicting what the trained model does.
    exported = report["packed"]
    assert exported["file_bytes"] == packed.stat().st_size < report["student"]["params"]  # < 1 byte per weight
    # simulate_export: the trained model validates in the export's arithmetic, so they agree exactly.
    assert exported["agreement_top1"] == 1.0, exported
    assert exported["top1"] == report["student"]["top1"]
    assert exported["latency_ms"] > 0 and exported["speedup_vs_fp32"] > 0

    missing = subprocess.run([sys.executable, "-m", "distill.cli", "eval", str(job.tmp / "nowhere")],
                             env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
