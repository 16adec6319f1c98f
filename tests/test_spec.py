"""The job spec: overrides work, and each kind of bad spec fails with its one-line error, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


def demo_doc() -> dict:
    return yaml.safe_load(DEMO.read_text())


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_demo_spec_loads_and_overrides_apply():
    spec = load_spec(DEMO, ["trainer.epochs=3", "teachers.members.1.replicas=2", "cluster.address=auto"])
    assert spec.trainer.epochs == 3
    assert spec.teachers.members[1].replicas == 2
    assert spec.cluster.address == "auto"
    assert [t.type for t in spec.loss.terms] == ["ce", "kd"]


def test_teacher_list_shorthand():
    doc = demo_doc()
    doc["teachers"] = doc["teachers"]["members"]
    spec = load_spec_from(doc)
    assert [m.name for m in spec.teachers.members] == ["cnn", "mlp"]


def load_spec_from(doc: dict):
    from distill.spec import parse_spec

    return parse_spec(doc)


BAD_SPECS = [
    ("unknown key", lambda d: d["trainer"].update(epochz=3), "trainer.epochz: Extra inputs are not permitted"),
    ("wrong type", lambda d: d["trainer"].update(epochs="many"), "trainer.epochs: Input should be a valid integer"),
    ("bad enum", lambda d: d["teachers"].update(combine="vote"), "teachers.combine: Input should be"),
    ("out of range", lambda d: d["trainer"].update(deepspeed_stage=4), "trainer.deepspeed_stage"),
    ("zero replicas", lambda d: d["teachers"]["members"][0].update(replicas=0), "teachers.members.0.replicas"),
    ("unknown loss", lambda d: d["loss"]["terms"].append({"type": "magic"}), "unknown term 'magic'"),
    ("kd without teachers", lambda d: d["teachers"].update(mode="none"), "needs teachers"),
    ("duplicate teacher", lambda d: d["teachers"]["members"][1].update(name="cnn"), "teacher names must be unique"),
    ("unknown kd teacher", lambda d: d["loss"]["terms"][1].update(teacher="vit"), "no teacher named 'vit'"),
]


@pytest.mark.parametrize("label,mutate,message", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_one_line_error(tmp_path, label, mutate, message):
    doc = demo_doc()
    mutate(doc)
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, doc))
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(SpecError, match="expected key.sub=value"):
        load_spec(DEMO, ["trainer.epochs"])
    with pytest.raises(SpecError, match="config file not found"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_cli_exits_2_with_one_line(tmp_path):
    doc = demo_doc()
    doc["trainer"]["batch_size"] = -1
    proc = _cli("run", str(write(tmp_path, doc)), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: trainer.batch_size")


def test_missing_teacher_file_and_class_mismatch(tmp_path, digits_root):
    """File checks run before training: a missing teacher file, and a teacher with 9 classes."""
    import torch

    from distill.checks import check_job
    from distill.data import load_meta
    from teachers.archs import create_teacher

    doc = demo_doc()
    doc["data"]["source"] = str(digits_root)
    for m in doc["teachers"]["members"]:
        m["source"] = str(tmp_path / f"{m['name']}.pt")
    spec = load_spec(write(tmp_path, doc))
    meta = load_meta(digits_root)
    with pytest.raises(SpecError, match=r"teachers.members.0.source: file not found"):
        check_job(spec, meta)
    torch.save(create_teacher("digits_cnn", num_classes=10).state_dict(), tmp_path / "cnn.pt")
    torch.save(create_teacher("digits_mlp", num_classes=9).state_dict(), tmp_path / "mlp.pt")
    doc["teachers"]["members"][1]["arch_options"] = {"num_classes": 9}
    spec = load_spec(write(tmp_path, doc))
    with pytest.raises(SpecError, match=r"teachers.members.1: .*9 classes but the data has 10"):
        check_job(spec, meta)
    doc["teachers"]["members"][1]["arch_options"] = {}
    doc["student"]["num_classes"] = 7
    spec = load_spec(write(tmp_path, doc))
    with pytest.raises(SpecError, match="student.num_classes: 7"):
        check_job(spec, meta)


def test_help_describes_every_command():
    proc = _cli("--help", cwd=ROOT)
    for word in ("run", "teachers", "data"):
        assert word in proc.stdout
    proc = _cli("run", "--help", cwd=ROOT)
    for word in ("--set", "--address", "--resume", "config"):
        assert word in proc.stdout
